//! Preflight: the token, the bucket and its region, before any export.

use super::sim::{
    assert_landed_and_proven, config, one_group, Harness, World, BUCKET, DAY, HOUR, T0,
};
use crate::engine::Event;
use crate::store::MetaKey;
use crate::store::Phase;

#[test]
fn without_aws_region_the_first_export_tick_learns_the_region_and_signs_for_it() {
    let (gitlab, ids) = one_group(8, 6);
    let mut world = World::new(gitlab);
    world.s3.region = Some("eu-west-3".into());
    let mut h = Harness::new(config(&[("AWS_REGION", "")]), world);
    assert_eq!(h.config.bucket.region, None);
    h.fire_next();
    assert_eq!(h.world.s3.probes.len(), 1);
    assert!(h.ticks[0].events().contains(&Event::RegionFound {
        bucket: BUCKET.into(),
        region: "eu-west-3".into()
    }));
    // The listing ends the first tick; the alarm's tick exports, signed for the learned region.
    h.fire_next();
    let tick = h.ticks.last().unwrap();
    assert_eq!(tick.exports, 6, "exports go on at once");
    assert_eq!(
        h.store()
            .meta(&[MetaKey::BucketRegion])
            .unwrap()
            .text(MetaKey::BucketRegion)
            .unwrap()
            .as_deref(),
        Some(r#"{"endpoint":null,"bucket":"backups","region":"eu-west-3"}"#)
    );
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.exported, run.verified), (8, 8));
    assert_eq!(h.world.s3.probes.len(), 1, "the region is asked once");
    assert_landed_and_proven(&h, &run);
    for e in &h.world.gitlab.exports {
        let url = e.upload_url.as_ref().unwrap();
        assert_eq!(url.host_str(), Some("backups.s3.eu-west-3.amazonaws.com"));
        let credential = url
            .query_pairs()
            .find(|(n, _)| n == "X-Amz-Credential")
            .unwrap()
            .1
            .into_owned();
        assert!(
            credential.contains("/eu-west-3/s3/aws4_request"),
            "{credential}"
        );
    }
    assert_eq!(
        h.world.gitlab.accepted().into_keys().collect::<Vec<_>>(),
        ids
    );
}

#[test]
fn without_a_region_header_an_error_is_noted_and_exports_wait() {
    let (gitlab, _) = one_group(4, 6);
    let mut world = World::new(gitlab);
    world.s3.region = None;
    let mut h = Harness::new(config(&[("AWS_REGION", "")]), world);
    for _ in 0..3 {
        h.fire_next();
    }
    assert_eq!(h.world.s3.probes.len(), 3, "one probe a tick");
    assert!(
        h.world.gitlab.exports.is_empty(),
        "no export without a region"
    );
    assert!(h.ticks.iter().all(|t| t.subrequests <= 2 && t.exports == 0));
    let error = h
        .store()
        .meta(&[MetaKey::LastError])
        .unwrap()
        .text(MetaKey::LastError)
        .unwrap()
        .unwrap();
    assert!(
        error.contains("could not learn the region of bucket backups")
            && error.contains("AWS_REGION"),
        "{error}"
    );
    // Without a region the preflight cannot write its probe: the run waits there.
    assert_eq!(h.latest_run().unwrap().phase, Phase::Preflight);
    assert!(h.world.s3.puts.is_empty());
    // Once S3 names it, exports go.
    h.world.s3.region = Some("ap-south-1".into());
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.exported, run.verified), (4, 4));
    assert_landed_and_proven(&h, &run);
}

#[test]
fn a_refused_token_or_bucket_stops_the_run_in_preflight_before_any_export() {
    // 401 on GET /user.
    let (mut gitlab, _) = one_group(3, 6);
    gitlab.token = "glpat-other".into();
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let run = h.run_until_finished(T0 + HOUR);
    let error = run.error.clone().unwrap();
    assert!(
        error.starts_with("stopped before any export:") && error.contains("401"),
        "{error}"
    );
    assert!(h.world.gitlab.listings.is_empty() && h.world.gitlab.exports.is_empty());
    assert!(h.world.s3.puts.is_empty());
    assert_eq!(run.summary_key, None);

    // 403 on the preflight PUT.
    let (gitlab, _) = one_group(3, 6);
    let mut world = World::new(gitlab);
    world.s3.put_status = Some(403);
    let mut h = Harness::new(config(&[]), world);
    let run = h.run_until_finished(T0 + HOUR);
    let error = run.error.clone().unwrap();
    assert!(
        error.contains("refused a signed PUT (403)") && error.contains("AccessDenied"),
        "{error}"
    );
    assert_eq!(h.world.gitlab.user_checks.len(), 1);
    assert!(h.world.gitlab.listings.is_empty() && h.world.gitlab.exports.is_empty());

    // 503 on the preflight PUT: tried again, then the run goes on.
    let (gitlab, _) = one_group(3, 6);
    let mut world = World::new(gitlab);
    world.s3.put_status = Some(503);
    let mut h = Harness::new(config(&[]), world);
    h.fire_next();
    h.fire_next();
    assert_eq!(h.latest_run().unwrap().phase, Phase::Preflight);
    assert!(h.world.gitlab.exports.is_empty());
    h.world.s3.put_status = None;
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.verified, run.error.as_deref()), (3, None));
    assert_landed_and_proven(&h, &run);
}

#[test]
fn a_key_that_may_put_but_not_read_stops_the_run_in_preflight_naming_s3_get_object() {
    // Without s3:GetObject every landed archive would read "never arrived" for hours: the
    // preflight reads its own object back and stops the run at once.
    let (gitlab, _) = one_group(4, 6);
    let mut world = World::new(gitlab);
    world.s3.object_status = Some(403);
    let mut h = Harness::new(config(&[]), world);
    let run = h.run_until_finished(T0 + HOUR);
    let error = run.error.clone().unwrap_or_default();
    assert!(
        error.starts_with("stopped before any export:") && error.contains("s3:GetObject"),
        "{error}"
    );
    assert!(h.world.gitlab.exports.is_empty(), "no export");
    assert_eq!(
        h.world.s3.puts.len(),
        2,
        "only the prefix's marker and the probe"
    );
    assert_eq!(h.world.s3.heads.len(), 1, "its read-back");
    assert!(h.world.s3.heads[0].1.ends_with("preflight.json"));
}

#[test]
fn the_first_run_marks_the_prefix_and_later_runs_find_it_their_own() {
    let (gitlab, _) = one_group(3, 6);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let first = h.run_until_finished(T0 + HOUR);
    assert_landed_and_proven(&h, &first);
    let marker = format!("/{}", crate::manifest::deployment_key(""));
    let marks: Vec<&String> = h
        .world
        .s3
        .puts
        .iter()
        .filter(|put| put.1 == marker)
        .map(|put| &put.2)
        .collect();
    assert_eq!(marks.len(), 1, "one marker");
    let ours = h.store().deployment_id().unwrap();
    assert_eq!(ours.len(), 32, "{ours}");
    let body: serde_json::Value = serde_json::from_str(marks[0]).unwrap();
    assert_eq!(body["deployment"], ours.as_str());
    h.run_until(T0 + DAY + HOUR, |h| {
        h.latest_run()
            .is_some_and(|r| r.id > first.id && r.phase == Phase::Finished)
    });
    let second = h.latest_run().unwrap();
    assert_eq!(second.error, None);
    assert_eq!((second.listed, second.verified), (3, 3));
    assert_eq!(
        h.world.s3.puts.iter().filter(|put| put.1 == marker).count(),
        1,
        "found, not written again"
    );
    assert_eq!(
        h.world.s3.gets.iter().map(|g| g.2).collect::<Vec<_>>(),
        vec![404, 200]
    );
}

#[test]
fn a_prefix_marked_by_another_deployment_stops_the_run_in_preflight() {
    let (gitlab, _) = one_group(3, 6);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let url = h
        .config
        .bucket
        .object_url("eu-west-1", &crate::manifest::deployment_key(""));
    h.world.s3.put_foreign_body(
        &url,
        r#"{"deployment":"0123456789abcdef0123456789abcdef"}"#,
        T0 - DAY,
    );
    let run = h.run_until_finished(T0 + HOUR);
    let error = run.error.clone().unwrap_or_default();
    assert!(
        error.starts_with("stopped before any export: S3_PREFIX is used by another deployment")
            && error.contains("0123456789abcdef0123456789abcdef"),
        "{error}"
    );
    assert!(h.world.gitlab.exports.is_empty());
    assert!(
        h.world.s3.puts.is_empty(),
        "nothing written: {:?}",
        h.world.s3.puts
    );
}
