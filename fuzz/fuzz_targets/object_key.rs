//! A backup's object key and its presigned upload URL. The prefix and bucket come through
//! `Config::from_lookup`, the project's path through `GitLab::read_projects_page`, as in the
//! worker; whatever those accept must give a key `<prefix><path>/<run start>.tar.gz` that no
//! manifest key can equal, an object URL that addresses exactly that key in that bucket (the
//! URL parser must not rewrite it), and a presigned URL for the same host and path, signed
//! with fixed credentials and time. Inputs are `name=value` lines (see `read`).
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use gitlab_backup::config::Config;
use gitlab_backup::gitlab::GitLab;
use gitlab_backup::http::{redact_url, HttpResponse, Method};
use gitlab_backup::manifest::{part_key, probe_key, summary_key};
use gitlab_backup::s3::{object_key, presign, region_from_answer, Addressing};
use gitlab_backup::secret::Secret;
use gitlab_backup::time::key_timestamp;
use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode_str;
use url::Url;

/// 9999-12-31T23:59:59Z: the last second a four-digit year (the key's format) can show.
const LAST_SECOND: u64 = 253_402_300_799;

const ENDPOINTS: [Option<&str>; 4] = [
    None,
    Some("http://127.0.0.1:9000"),
    Some("https://account.r2.cloudflarestorage.com"),
    Some("https://minio.example.com/s3/"),
];

mod common;

/// What one input sets, from `name=value` lines.
#[derive(Default)]
struct Input {
    prefix: Option<String>,
    bucket: String,
    endpoint: usize,
    /// `AWS_REGION`; without it, a region as S3 names it in `x-amz-bucket-region`.
    region: Option<String>,
    discovered_region: String,
    path: String,
    run_started_s: u64,
    part: u64,
    expiry_hours: u64,
}

fn read(data: &[u8]) -> Input {
    let mut input = Input {
        bucket: "backups".into(),
        discovered_region: "eu-west-1".into(),
        path: "group/project".into(),
        run_started_s: 1_700_000_000,
        expiry_hours: 24,
        ..Input::default()
    };
    for (name, value) in common::key_values(data) {
        let number = || value.trim().parse::<u64>().unwrap_or(0);
        match name.as_str() {
            "prefix" => input.prefix = Some(value.clone()),
            "bucket" => input.bucket = value.clone(),
            "endpoint" => input.endpoint = number() as usize,
            "region" => input.region = Some(value.clone()),
            "discovered" => input.discovered_region = value.clone(),
            "path" => input.path = value.clone(),
            "time" => input.run_started_s = number(),
            "part" => input.part = number(),
            "expiry" => input.expiry_hours = number(),
            _ => {}
        }
    }
    input
}

fuzz_target!(|data: &[u8]| {
    let input = read(data);
    let mut vars = HashMap::from([
        ("GITLAB_TOKEN", "glpat-fuzz".to_owned()),
        ("GROUPS_TO_BACKUP", "42".to_owned()),
        ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE".to_owned()),
        (
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned(),
        ),
        ("AWS_S3_BUCKET", input.bucket),
        (
            "PRESIGN_EXPIRY_HOURS",
            (input.expiry_hours % 168 + 1).to_string(),
        ),
        // At most the shortest expiry, so that every expiry forms a configuration.
        ("VERIFY_TIMEOUT_MINUTES", "60".to_owned()),
    ]);
    if let Some(prefix) = input.prefix {
        vars.insert("S3_PREFIX", prefix);
    }
    if let Some(endpoint) = ENDPOINTS[input.endpoint % ENDPOINTS.len()] {
        vars.insert("S3_ENDPOINT", endpoint.to_owned());
    }
    if let Some(region) = input.region {
        vars.insert("AWS_REGION", region);
    }
    let Ok(config) = Config::from_lookup(|name| vars.get(name).cloned()) else {
        return;
    };

    // The project's path as a listing page brings it.
    let gitlab = GitLab::new(&config.gitlab_url, Secret::new("glpat-fuzz"));
    let page = serde_json::json!([{"id": 1, "path_with_namespace": input.path}]);
    let Ok(page) = gitlab.read_projects_page(&HttpResponse {
        status: 200,
        headers: Vec::new(),
        body: serde_json::to_vec(&page).unwrap(),
    }) else {
        return;
    };
    let path = &page.projects[0].path_with_namespace;
    assert_eq!(path, &input.path);

    let region = match &config.bucket.region {
        Some(region) => region.clone(),
        None => {
            let answer = HttpResponse {
                status: 301,
                headers: vec![("x-amz-bucket-region".into(), input.discovered_region)],
                body: Vec::new(),
            };
            match region_from_answer(&answer) {
                Some(region) => region,
                None => return,
            }
        }
    };

    // The key: the prefix, the path, the run's start; nothing else.
    let started =
        SystemTime::UNIX_EPOCH + Duration::from_secs(input.run_started_s % (LAST_SECOND + 1));
    let stamp = key_timestamp(started);
    assert_eq!(stamp.len(), 19, "{stamp}");
    let prefix = &config.s3_prefix;
    let key = object_key(prefix, path, started);
    assert_eq!(key, format!("{prefix}{path}/{stamp}.tar.gz"));
    let rest = key.strip_prefix(prefix.as_str()).unwrap();
    assert!(!rest.starts_with('/'), "the key leaves the prefix: {key}");
    assert!(!key.split('/').any(|s| s == "." || s == ".."), "{key}");
    // No manifest object of any run can take a backup's key.
    let part = input.part % 100_000 + 1;
    for manifest in [
        probe_key(prefix, started),
        summary_key(prefix, started),
        part_key(prefix, started, part),
    ] {
        assert!(manifest.starts_with(&format!("{prefix}_runs/{stamp}/")));
        assert_ne!(manifest, key);
        assert!(!manifest.ends_with(".tar.gz"));
    }

    // The object URL addresses exactly this key in this bucket.
    let bucket = &config.bucket;
    let url = bucket.object_url(&region, &key);
    let decoded: Vec<String> = url
        .path_segments()
        .unwrap()
        .map(|s| percent_decode_str(s).decode_utf8().unwrap().into_owned())
        .collect();
    let key_segments: Vec<&str> = key.split('/').collect();
    match &bucket.addressing {
        Addressing::Endpoint(endpoint) => {
            assert_eq!(url.origin(), endpoint.origin());
            let base: Vec<&str> = endpoint
                .path_segments()
                .unwrap()
                .filter(|s| !s.is_empty())
                .collect();
            assert_eq!(&decoded[..base.len()], &base[..], "{url}");
            assert_eq!(decoded[base.len()], bucket.name, "{url}");
            assert_eq!(&decoded[base.len() + 1..], &key_segments[..], "{url}");
        }
        Addressing::VirtualHosted => {
            assert_eq!(
                url.host_str(),
                Some(
                    format!("{}.s3.{region}.amazonaws.com", bucket.name)
                        .to_ascii_lowercase()
                        .as_str()
                )
            );
            assert_eq!(decoded, key_segments, "{url}");
        }
        Addressing::PathStyle => {
            assert_eq!(
                url.host_str(),
                Some(
                    format!("s3.{region}.amazonaws.com")
                        .to_ascii_lowercase()
                        .as_str()
                )
            );
            assert_eq!(decoded[0], bucket.name, "{url}");
            assert_eq!(&decoded[1..], &key_segments[..], "{url}");
        }
    }
    assert!(url.query().is_none() && url.fragment().is_none());

    // Presigned with fixed credentials and time: the same host and path, the signature in the
    // query, the same URL twice, and a URL that survives the export request's form encoding.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let sign = || {
        presign(
            Method::Put,
            &url,
            &config.credentials,
            &region,
            now,
            config.presign_expiry,
        )
    };
    let signed = match sign() {
        Ok(signed) => signed,
        // A URL longer than HTTP libraries take (64 KiB) may be refused, never panic.
        Err(_) if url.as_str().len() > 60_000 => return,
        Err(e) => panic!("{url} cannot be presigned: {e}"),
    };
    assert_eq!(sign().as_ref(), Ok(&signed), "signing is deterministic");
    assert_eq!(signed.scheme(), url.scheme());
    assert_eq!(signed.host_str(), url.host_str());
    assert_eq!(signed.port_or_known_default(), url.port_or_known_default());
    assert_eq!(signed.path(), url.path());
    let query: HashMap<String, String> = signed.query_pairs().into_owned().collect();
    assert_eq!(query["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
    assert_eq!(
        query["X-Amz-Credential"],
        format!("AKIAIOSFODNN7EXAMPLE/20231114/{region}/s3/aws4_request")
    );
    assert_eq!(query["X-Amz-Date"], "20231114T221320Z");
    assert_eq!(query["X-Amz-SignedHeaders"], "host");
    assert_eq!(
        query["X-Amz-Expires"],
        config.presign_expiry.as_secs().to_string()
    );
    let signature = &query["X-Amz-Signature"];
    assert!(signature.len() == 64 && signature.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!redact_url(&signed).contains(signature.as_str()));
    let export = gitlab.export_request(1, &signed);
    let form: Vec<(String, String)> = url::form_urlencoded::parse(export.body.unwrap().as_bytes())
        .into_owned()
        .collect();
    assert_eq!(form[0], ("upload[url]".to_owned(), signed.to_string()));
    assert_eq!(Url::parse(&form[0].1).as_ref(), Ok(&signed));
});
