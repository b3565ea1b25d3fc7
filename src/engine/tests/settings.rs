//! Settings are pinned per run: a run finishes with the GitLab, bucket, prefix and region it
//! started with, whatever the configuration says meanwhile; the new settings apply from the next
//! run. The bucket's learned region is kept per endpoint and bucket, and asked again when S3 says
//! it is another.

use std::collections::BTreeSet;
use std::time::{Duration, UNIX_EPOCH};

use url::Url;

use super::sim::{bucket_and_region, config, one_group, Harness, World, DAY, HOUR, T0};
use crate::engine::Event;
use crate::s3::object_key;
use crate::store::{MetaKey, Phase, RunRow};

/// The paths of what the worker PUT, GitLab uploaded and the worker looked for (HEAD, GET), in the
/// bucket, since `from` (an arrival time).
fn bucket_paths(h: &Harness, from: u64) -> Vec<String> {
    let s3 = &h.world.s3;
    let puts = s3.puts.iter().map(|(at, path, _)| (*at, path));
    let uploads = s3.uploads.iter().map(|(at, path, _)| (*at, path));
    let heads = s3.heads.iter().map(|(at, path, _)| (*at, path));
    let gets = s3.gets.iter().map(|(at, path, _)| (*at, path));
    let ranged_gets = s3.ranged_gets.iter().map(|(at, path, _)| (*at, path));
    puts.chain(uploads)
        .chain(heads)
        .chain(gets)
        .chain(ranged_gets)
        .filter(|(at, _)| *at >= from)
        .map(|(_, path)| path.clone())
        .collect()
}

/// Every manifest line of the run names the key its project's backup is at, and each verified
/// one is in the bucket; the summary is under `prefix`.
fn assert_manifest_keys_exist(h: &Harness, run: &RunRow, prefix: &str) {
    let summary = run.summary_key.as_deref().expect("the summary");
    assert!(summary.starts_with(&format!("{prefix}_runs/")), "{summary}");
    let folder = summary.trim_end_matches("summary.json");
    let uploaded: BTreeSet<&str> = h
        .world
        .s3
        .uploads
        .iter()
        .map(|(_, path, _)| path.as_str())
        .collect();
    let mut lines = 0;
    for (_, path, body) in &h.world.s3.puts {
        if !(path.starts_with(&format!("/{folder}")) && path.contains("/part-")) {
            continue;
        }
        for line in body.lines() {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            let key = entry["key"].as_str().unwrap();
            assert!(key.starts_with(prefix), "{key}");
            assert_eq!(entry["outcome"], "verified", "{entry}");
            assert!(
                uploaded.contains(format!("/{key}").as_str()),
                "the manifest lists {key}, which is not in the bucket"
            );
            lines += 1;
        }
    }
    assert_eq!(lines as u64, run.listed, "one manifest line per project");
}

#[test]
fn a_run_keeps_the_gitlab_and_prefix_it_started_with_and_the_next_run_takes_the_new_ones() {
    let (gitlab, ids) = one_group(12, 6);
    let old_origin = gitlab.base.clone();
    let mut h = Harness::new(config(&[("S3_PREFIX", "old")]), World::new(gitlab));
    // Listed, and a first minute of exports accepted: the run is in the middle.
    h.run_until(T0 + HOUR, |h| h.world.gitlab.accepted().len() >= 6);
    let first = h.latest_run().unwrap();
    assert_eq!(first.phase, Phase::Exporting);

    // GITLAB_URL and S3_PREFIX change while the run goes on.
    h.config = config(&[
        ("S3_PREFIX", "new"),
        ("GITLAB_URL", "https://gitlab.moved.example/"),
    ]);
    let changed_at = h.world.sent.len();
    let run = h.run_until_finished(T0 + 2 * HOUR);
    assert_eq!((run.id, run.error.as_deref()), (first.id, None));
    assert_eq!((run.listed, run.verified), (12, 12));
    assert_eq!(
        h.world.gitlab.accepted().into_keys().collect::<Vec<_>>(),
        ids,
        "each exported, all at the run's GitLab"
    );
    // Every request went to the run's GitLab (with its token) or to the bucket; the moved
    // address got nothing, the token least of all.
    for sent in &h.world.sent[changed_at..] {
        let origin = sent.url.origin();
        assert!(
            origin == old_origin.origin()
                || sent.url.host_str().unwrap().ends_with(".amazonaws.com"),
            "{}",
            sent.url
        );
        assert_eq!(
            sent.with_token,
            origin == old_origin.origin(),
            "{}",
            sent.url
        );
    }
    // Every key the run used is under the prefix it started with, and its manifest lists keys
    // that exist.
    let paths = bucket_paths(&h, first.started_ms);
    assert!(paths.iter().all(|p| p.starts_with("/old/")), "{paths:#?}");
    let started = UNIX_EPOCH + Duration::from_millis(run.started_ms);
    for id in &ids {
        let key = format!(
            "/{}",
            object_key("old/", h.world.gitlab.path_of(*id), started)
        );
        assert!(
            h.world.s3.uploads.iter().any(|u| u.1 == key),
            "{key} uploaded"
        );
    }
    assert_manifest_keys_exist(&h, &run, "old/");

    // GitLab now answers at its new address: the next run goes there, under the new prefix.
    h.world.gitlab.base = Url::parse("https://gitlab.moved.example/").unwrap();
    let before_next = h.world.sent.len();
    h.run_until(T0 + DAY + 2 * HOUR, |h| {
        h.latest_run()
            .is_some_and(|r| r.id > run.id && r.phase == Phase::Finished)
    });
    let next = h.latest_run().unwrap();
    assert_eq!((next.error.as_deref(), next.verified), (None, 12));
    assert!(h.world.sent[before_next..]
        .iter()
        .all(|s| s.url.origin() != old_origin.origin()));
    let paths = bucket_paths(&h, next.started_ms);
    assert!(
        !paths.is_empty() && paths.iter().all(|p| p.starts_with("/new/")),
        "{paths:#?}"
    );
    assert_manifest_keys_exist(&h, &next, "new/");
}

#[test]
fn a_region_learned_for_one_bucket_is_not_used_for_another() {
    let (gitlab, _) = one_group(4, 6);
    let mut world = World::new(gitlab);
    world.s3.bucket_regions = [
        ("backups".to_owned(), "eu-west-3".to_owned()),
        ("archive".to_owned(), "ap-south-1".to_owned()),
    ]
    .into();
    let mut h = Harness::new(config(&[("AWS_REGION", "")]), world);
    let first = h.run_until_finished(T0 + HOUR);
    assert_eq!((first.error.as_deref(), first.verified), (None, 4));
    assert_eq!(h.world.s3.probes.len(), 1);

    // The next run backs up to another bucket: its region is asked, not taken from the first.
    h.config = config(&[("AWS_REGION", ""), ("AWS_S3_BUCKET", "archive")]);
    let from = h.world.sent.len();
    h.run_until(T0 + DAY + HOUR, |h| {
        h.latest_run()
            .is_some_and(|r| r.id > first.id && r.phase == Phase::Finished)
    });
    let next = h.latest_run().unwrap();
    assert_eq!((next.error.as_deref(), next.verified), (None, 4));
    assert_eq!(h.world.s3.probes.len(), 2, "asked for the new bucket");
    assert_eq!(
        h.world.s3.wrong_region,
        [],
        "never signed for the wrong region"
    );
    for sent in &h.world.sent[from..] {
        if let Some(host) = sent
            .url
            .host_str()
            .filter(|h| h.ends_with(".amazonaws.com"))
        {
            assert!(
                host == "archive.s3.ap-south-1.amazonaws.com"
                    || host == "archive.s3.us-east-1.amazonaws.com",
                "{host}"
            );
        }
    }
    let learned = h
        .store()
        .meta(&[MetaKey::BucketRegion])
        .unwrap()
        .text(MetaKey::BucketRegion)
        .unwrap();
    assert_eq!(
        learned.as_deref(),
        Some(r#"{"endpoint":null,"bucket":"archive","region":"ap-south-1"}"#)
    );
}

#[test]
fn a_bucket_in_another_region_than_the_one_learned_is_asked_again_and_every_run_goes_on() {
    let (gitlab, _) = one_group(4, 6);
    let mut world = World::new(gitlab);
    world.s3.bucket_regions = [("backups".to_owned(), "eu-west-3".to_owned())].into();
    let mut h = Harness::new(config(&[("AWS_REGION", "")]), world);
    let first = h.run_until_finished(T0 + HOUR);
    assert_eq!((first.error.as_deref(), first.verified), (None, 4));

    // The bucket is now in another region (made again there, its objects copied): S3 answers
    // the next run's first request signed for the old one with a redirect naming the new one.
    h.world
        .s3
        .bucket_regions
        .insert("backups".into(), "eu-central-1".into());
    h.run_until(T0 + DAY + HOUR, |h| {
        h.latest_run()
            .is_some_and(|r| r.id > first.id && r.phase == Phase::Finished)
    });
    let next = h.latest_run().unwrap();
    assert_eq!(
        (next.error.as_deref(), next.verified),
        (None, 4),
        "{}",
        h.describe()
    );
    assert_eq!(h.world.s3.wrong_region.len(), 1, "one request met the move");
    assert_eq!(h.world.s3.probes.len(), 2, "the region is asked again once");
    let events: Vec<&Event> = h.ticks.iter().flat_map(|t| t.events()).collect();
    assert!(events.contains(&&Event::RegionForgotten {
        bucket: "backups".into(),
        region: "eu-west-3".into(),
        named: Some("eu-central-1".into()),
    }));
    assert!(!events.iter().any(|e| matches!(e, Event::RunStopped { .. })));
    for e in h
        .world
        .gitlab
        .exports
        .iter()
        .filter(|e| e.sent_ms >= next.started_ms)
    {
        let url = e.upload_url.as_ref().unwrap();
        assert_eq!(
            url.host_str(),
            Some("backups.s3.eu-central-1.amazonaws.com")
        );
    }
}

#[test]
fn a_wrong_region_answer_while_verifying_asks_the_region_again_and_proves_every_backup() {
    let (gitlab, ids) = one_group(10, 6);
    let mut world = World::new(gitlab);
    world.s3.bucket_regions = [("backups".to_owned(), "eu-west-3".to_owned())].into();
    let mut h = Harness::new(
        config(&[("AWS_REGION", ""), ("VERIFY_TIMEOUT_MINUTES", "10")]),
        world,
    );
    h.run_until(T0 + HOUR, |h| h.world.s3.uploads.len() >= 3);
    // The bucket moves with its objects while the run checks them; exports accepted with URLs
    // for the old region never land and are tried again.
    h.world
        .s3
        .bucket_regions
        .insert("backups".into(), "eu-central-1".into());
    let run = h.run_until_finished(T0 + 3 * HOUR);
    assert_eq!(
        (run.error.as_deref(), run.verified),
        (None, 10),
        "{}",
        h.describe()
    );
    assert_eq!(h.world.s3.probes.len(), 2, "learned, then asked again once");
    assert!(!h.world.s3.wrong_region.is_empty());
    let last_url = h.world.gitlab.exports.last().unwrap().upload_url.clone();
    assert_eq!(bucket_and_region(&last_url.unwrap()).1, "eu-central-1");
    for id in &ids {
        let path = h.world.gitlab.path_of(*id).to_owned();
        assert!(
            h.world
                .s3
                .ranged_gets
                .iter()
                .any(|(_, p, status)| *status == 206 && p.contains(&path)),
            "{path} proven"
        );
    }
}

#[test]
fn a_wrong_aws_region_set_by_the_user_stops_the_run_naming_it() {
    let (gitlab, _) = one_group(3, 6);
    let mut world = World::new(gitlab);
    world.s3.bucket_regions = [("backups".to_owned(), "eu-central-1".to_owned())].into();
    // The harness's configuration sets AWS_REGION to eu-west-1.
    let mut h = Harness::new(config(&[]), world);
    let run = h.run_until_finished(T0 + HOUR);
    let error = run.error.clone().unwrap_or_default();
    assert!(
        error.starts_with("stopped before any export:")
            && error.contains("eu-central-1")
            && error.contains("set AWS_REGION"),
        "{error}"
    );
    assert!(
        h.world.s3.probes.is_empty(),
        "the user's region is not second-guessed"
    );
    assert!(h.world.gitlab.exports.is_empty());
}
