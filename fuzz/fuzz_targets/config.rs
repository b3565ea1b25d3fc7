//! `Config::from_lookup` with an arbitrary name → value map, written as `NAME=value` lines. It
//! must never panic; a configuration it accepts must hold every promise `Config` documents, and
//! the URLs built from it must stay within `GITLAB_URL` and the bucket.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use gitlab_backup::config::{Config, SETTINGS};
use gitlab_backup::gitlab::{GitLab, GroupRef};
use gitlab_backup::http::{HttpResponse, Method};
use gitlab_backup::s3::{presign, Addressing};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    // `NAME=value` lines; a later line for the same name wins, as in a map.
    let vars: HashMap<String, String> = common::key_values(data).into_iter().collect();
    let result = Config::from_lookup(|name| vars.get(name).cloned());

    // No problem and nothing shown depends on a secret's value, only on whether it is set.
    let mut replaced = vars.clone();
    for (name, secret) in SETTINGS {
        if let Some(value) = replaced.get_mut(*name) {
            if *secret && !value.trim().is_empty() {
                *value = "replaced-secret".to_owned();
            }
        }
    }
    let again = Config::from_lookup(|name| replaced.get(name).cloned());

    let config = match result {
        Err(err) => {
            assert!(!err.problems.is_empty());
            for problem in &err.problems {
                assert!(
                    SETTINGS.iter().any(|(name, _)| *name == problem.setting),
                    "a problem names an unknown setting: {problem}"
                );
                assert!(!problem.message.is_empty());
            }
            assert_eq!(
                again.as_ref().err(),
                Some(&err),
                "a problem depends on a secret"
            );
            return;
        }
        Ok(config) => config,
    };
    let again = again.expect("a configuration depends on a secret's value");
    assert_eq!(
        format!("{config:?}"),
        format!("{again:?}"),
        "Debug shows a secret"
    );

    // GITLAB_URL: http(s), no query, fragment or credentials, ending in exactly one '/'.
    let base = &config.gitlab_url;
    assert!(matches!(base.scheme(), "http" | "https"));
    assert!(base.query().is_none() && base.fragment().is_none());
    assert!(base.username().is_empty() && base.password().is_none());
    assert!(base.path().ends_with('/') && !base.path().ends_with("//"));

    // Groups: at least one, none twice.
    assert!(!config.groups.is_empty());
    for (i, a) in config.groups.iter().enumerate() {
        for b in &config.groups[i + 1..] {
            assert_ne!(a, b);
        }
        if let GroupRef::Path(path) = a {
            assert!(!path.is_empty() && !path.starts_with('/') && !path.ends_with('/'));
            assert!(!path.chars().any(char::is_whitespace));
        }
    }

    // The prefix: empty or one '/'-ended folder path without dot folders.
    let prefix = &config.s3_prefix;
    assert!(prefix.is_empty() || prefix.ends_with('/'));
    assert!(!prefix.starts_with('/'));
    assert!(!prefix.split('/').any(|s| s == "." || s == ".."));

    // Numbers within their documented ranges.
    assert!((1..=1000).contains(&config.exports_per_minute));
    assert!((2..=10_000).contains(&config.subrequests_per_invocation));
    assert!((10..=300_000).contains(&config.cpu_ms_per_invocation));
    assert!(config.presign_expiry >= Duration::from_secs(3600));
    assert!(config.presign_expiry <= Duration::from_secs(168 * 3600));
    assert!(config.backup_interval >= Duration::from_secs(3600));
    assert!(config.backup_start_hour_utc.is_none_or(|h| h < 24));
    assert!((1..=10).contains(&config.max_attempts));
    assert!(config.verify_timeout >= Duration::from_secs(60));

    // Every GitLab URL stays under GITLAB_URL's API, and a first page is a link the listing
    // would follow.
    let gitlab = GitLab::new(base, config.gitlab_token.clone());
    let api = base.join("api/v4/").unwrap();
    for group in &config.groups {
        let first = gitlab.first_projects_page(group, config.listing);
        assert_eq!(first.origin(), api.origin());
        assert!(first.path().starts_with(api.path()), "{first}");
        let segments: Vec<&str> = first.path()[api.path().len()..].split('/').collect();
        assert_eq!(segments.len(), 3, "a group is one path segment: {first}");
        let page = gitlab
            .read_projects_page(&HttpResponse {
                status: 200,
                headers: vec![("link".into(), format!("<{first}>; rel=\"next\""))],
                body: b"[]".to_vec(),
            })
            .unwrap_or_else(|e| panic!("{first} is not followed: {e}"));
        assert_eq!(page.next.as_ref(), Some(&first));
    }
    for request in [
        gitlab.user_request(),
        gitlab.export_status_request(u64::MAX),
    ] {
        assert!(request.url.as_str().starts_with(api.as_str()));
    }

    // The bucket: its URLs stay on the endpoint or AWS, and presigning works.
    let region = config.bucket.region.clone().unwrap_or("eu-west-1".into());
    let object = config
        .bucket
        .object_url(&region, "group/project/2024-01-02-03-04-05.tar.gz");
    match &config.bucket.addressing {
        Addressing::Endpoint(endpoint) => {
            assert_eq!(object.origin(), endpoint.origin());
            assert!(object.path().starts_with(endpoint.path()), "{object}");
        }
        Addressing::VirtualHosted => {
            assert_eq!(
                object.host_str(),
                Some(format!("{}.s3.{region}.amazonaws.com", config.bucket.name).as_str())
            );
        }
        Addressing::PathStyle => {
            assert_eq!(
                object.host_str(),
                Some(format!("s3.{region}.amazonaws.com").as_str())
            );
        }
    }
    assert!(object
        .path()
        .ends_with("/group/project/2024-01-02-03-04-05.tar.gz"));
    let _ = config.bucket.region_probe_url();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let signed = presign(
        Method::Put,
        &object,
        &config.credentials,
        &region,
        now,
        config.presign_expiry,
    )
    .unwrap_or_else(|e| panic!("{object} cannot be presigned: {e}"));
    assert_eq!(signed.path(), object.path());
    assert_eq!(signed.host_str(), object.host_str());
});
