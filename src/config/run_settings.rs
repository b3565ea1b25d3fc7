//! The settings a run keeps from its start to its end (`runs.settings`): where its projects are
//! listed and exported (GitLab's origin, the groups) and where their backups and the run's record
//! go (the bucket with its endpoint and addressing, the prefix, the region). Settings changed
//! while a run is going apply from the next run. Secrets are never kept: the token and the
//! secret key always come from the current configuration, and the token goes only to the run's
//! GitLab.

use serde::{Deserialize, Serialize};
use url::Url;

use super::{ChangedOnly, Config};
use crate::s3::{Addressing, Bucket};

/// What a run started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSettings {
    /// `GITLAB_URL`, ending in `/`.
    pub gitlab_url: Url,
    /// `GROUPS_TO_BACKUP`, as the run's listings name them.
    pub groups: Vec<String>,
    /// `AWS_S3_BUCKET` and `S3_ENDPOINT`; its `region` is `AWS_REGION` as set (or the endpoint's
    /// default), `None` when the bucket is asked.
    pub bucket: Bucket,
    pub s3_prefix: String,
    /// The region the bucket named when asked, if `bucket.region` is `None`.
    pub learned_region: Option<String>,
    /// Changed-only runs, as the run started with them (`None`: every project is exported; so
    /// is every project of a run begun before runs kept this).
    pub changed_only: Option<ChangedOnly>,
    /// The first run whose backups are where this run's go (the same GitLab, bucket, endpoint
    /// and prefix): only those can hold a project unchanged. `None`: not known (a run begun
    /// before runs kept it), this run's own alone.
    pub backups_from_run: Option<u64>,
}

/// As stored (URLs as text, read back with the `url` parser).
#[derive(Serialize, Deserialize)]
struct Stored {
    gitlab_url: String,
    groups: Vec<String>,
    bucket: String,
    addressing: StoredAddressing,
    region: Option<String>,
    learned_region: Option<String>,
    s3_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    changed_only: Option<ChangedOnly>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backups_from_run: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredAddressing {
    Endpoint(String),
    VirtualHosted,
    PathStyle,
}

impl RunSettings {
    /// The settings of `config`, for a run starting now; `learned_region`: the region the
    /// bucket named when asked before (for this endpoint and bucket), if any.
    pub fn of(config: &Config, learned_region: Option<String>) -> RunSettings {
        RunSettings {
            gitlab_url: config.gitlab_url.clone(),
            groups: config.groups.iter().map(ToString::to_string).collect(),
            bucket: config.bucket.clone(),
            s3_prefix: config.s3_prefix.clone(),
            learned_region: learned_region.filter(|_| config.bucket.region.is_none()),
            changed_only: config.changed_only,
            backups_from_run: None,
        }
    }

    /// These settings for a run after `previous` (its id and stored settings): the backups of
    /// the runs since the GitLab, the bucket, its endpoint or the prefix last changed count as
    /// holding a project. Without a previous run, every backup counts (there is none); after one
    /// that kept no settings, or other ones, only this run's and later runs' backups do.
    pub fn after(mut self, previous: Option<(u64, Option<&str>)>) -> RunSettings {
        self.backups_from_run = Some(match previous {
            None => 0,
            Some((id, stored)) => match stored.map(RunSettings::from_json) {
                Some(Ok(before)) if before.same_place(&self) => {
                    before.backups_from_run.unwrap_or(id)
                }
                _ => id + 1,
            },
        });
        self
    }

    /// Whether backups of a run with `other` go to the same GitLab's projects and the same
    /// place in the same bucket.
    fn same_place(&self, other: &RunSettings) -> bool {
        self.gitlab_url == other.gitlab_url
            && self.bucket.name == other.bucket.name
            && self.bucket.endpoint() == other.bucket.endpoint()
            && self.s3_prefix == other.s3_prefix
    }

    /// The region the run signs for: `AWS_REGION` (or the endpoint's default), else the one
    /// learned; `None` until the bucket is asked.
    pub fn region(&self) -> Option<&str> {
        self.bucket
            .region
            .as_deref()
            .or(self.learned_region.as_deref())
    }

    /// Whether the region is learned by asking the bucket (no `AWS_REGION`, on AWS), so that a
    /// wrong-region answer is worth asking again.
    pub fn region_is_learned(&self) -> bool {
        self.bucket.region.is_none()
    }

    pub fn to_json(&self) -> String {
        let addressing = match &self.bucket.addressing {
            Addressing::Endpoint(endpoint) => StoredAddressing::Endpoint(endpoint.to_string()),
            Addressing::VirtualHosted => StoredAddressing::VirtualHosted,
            Addressing::PathStyle => StoredAddressing::PathStyle,
        };
        serde_json::to_string(&Stored {
            gitlab_url: self.gitlab_url.to_string(),
            groups: self.groups.clone(),
            bucket: self.bucket.name.clone(),
            addressing,
            region: self.bucket.region.clone(),
            learned_region: self.learned_region.clone(),
            s3_prefix: self.s3_prefix.clone(),
            changed_only: self.changed_only,
            backups_from_run: self.backups_from_run,
        })
        .unwrap_or_default()
    }

    /// Reads what [`RunSettings::to_json`] wrote.
    pub fn from_json(json: &str) -> Result<RunSettings, String> {
        let stored: Stored =
            serde_json::from_str(json).map_err(|e| format!("the run's settings: {e}"))?;
        let url = |raw: &str| Url::parse(raw).map_err(|e| format!("the run's settings: {e}"));
        let addressing = match stored.addressing {
            StoredAddressing::Endpoint(endpoint) => Addressing::Endpoint(url(&endpoint)?),
            StoredAddressing::VirtualHosted => Addressing::VirtualHosted,
            StoredAddressing::PathStyle => Addressing::PathStyle,
        };
        Ok(RunSettings {
            gitlab_url: url(&stored.gitlab_url)?,
            groups: stored.groups,
            bucket: Bucket {
                name: stored.bucket,
                region: stored.region,
                addressing,
            },
            s3_prefix: stored.s3_prefix,
            learned_region: stored.learned_region,
            changed_only: stored.changed_only,
            backups_from_run: stored.backups_from_run,
        })
    }

    /// The settings whose current value (`config`) differs from the run's, by name.
    pub fn changed_in(&self, config: &Config) -> Vec<&'static str> {
        let now = RunSettings::of(config, None);
        let same_endpoint = self.bucket.endpoint() == now.bucket.endpoint();
        [
            ("GITLAB_URL", self.gitlab_url != now.gitlab_url),
            ("GROUPS_TO_BACKUP", self.groups != now.groups),
            ("AWS_S3_BUCKET", self.bucket.name != now.bucket.name),
            ("S3_ENDPOINT", !same_endpoint),
            // A new endpoint brings its default region with it: the endpoint is what changed.
            (
                "AWS_REGION",
                same_endpoint && self.bucket.region != now.bucket.region,
            ),
            ("S3_PREFIX", self.s3_prefix != now.s3_prefix),
            (
                "INCREMENTAL",
                self.changed_only.is_some() != now.changed_only.is_some(),
            ),
            (
                "FULL_BACKUP_EVERY_DAYS",
                matches!((self.changed_only, now.changed_only),
                    (Some(a), Some(b)) if a.full_every_days != b.full_every_days),
            ),
            (
                "CHANGED_OVERLAP_MINUTES",
                matches!((self.changed_only, now.changed_only),
                    (Some(a), Some(b)) if a.overlap_minutes != b.overlap_minutes),
            ),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(overrides: &[(&str, &str)]) -> Config {
        Config::from_lookup(|name| {
            overrides
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
                .or_else(|| {
                    match name {
                        "GITLAB_TOKEN" => Some("glpat-secret-token"),
                        "GROUPS_TO_BACKUP" => Some("7,acme/platform"),
                        "AWS_S3_BUCKET" => Some("backups"),
                        "AWS_ACCESS_KEY_ID" => Some("AKID"),
                        "AWS_SECRET_ACCESS_KEY" => Some("s3-secret-key"),
                        _ => None,
                    }
                    .map(str::to_owned)
                })
        })
        .unwrap()
    }

    #[test]
    fn a_runs_settings_read_back_as_they_were_and_hold_no_secret() {
        for overrides in [
            &[][..],
            &[
                ("AWS_S3_BUCKET", "gitlab_projects_backup"),
                ("AWS_REGION", "eu-west-1"),
            ][..],
            &[
                ("S3_ENDPOINT", "http://127.0.0.1:9000/"),
                ("GITLAB_URL", "https://h.example/gitlab"),
                ("S3_PREFIX", "team"),
            ][..],
        ] {
            let config = config(overrides);
            let settings = RunSettings::of(&config, Some("eu-west-3".into()));
            let json = settings.to_json();
            assert!(
                !json.contains("glpat-secret-token") && !json.contains("s3-secret-key"),
                "{json}"
            );
            assert_eq!(RunSettings::from_json(&json).unwrap(), settings, "{json}");
            assert!(settings.changed_in(&config).is_empty());
        }
        // A learned region is kept only where the bucket is asked.
        let on_aws = RunSettings::of(&config(&[]), Some("eu-west-3".into()));
        assert_eq!(on_aws.region(), Some("eu-west-3"));
        let set = RunSettings::of(&config(&[("AWS_REGION", "us-west-2")]), Some("x".into()));
        assert_eq!(
            (set.region(), set.learned_region.as_deref()),
            (Some("us-west-2"), None)
        );
        assert!(RunSettings::from_json("{\"gitlab_url\": 1}")
            .unwrap_err()
            .starts_with("the run's settings: "));
    }

    #[test]
    fn the_settings_that_changed_since_the_run_started_are_named() {
        let settings = RunSettings::of(&config(&[]), None);
        let now = config(&[
            ("GITLAB_URL", "https://gitlab.example.com"),
            ("S3_PREFIX", "new"),
            ("AWS_REGION", "eu-west-1"),
            // Not pinned: they change what the run does from the next tick.
            ("EXPORTS_PER_MINUTE", "3"),
            ("AWS_ACCESS_KEY_ID", "AKID2"),
        ]);
        assert_eq!(
            settings.changed_in(&now),
            ["GITLAB_URL", "AWS_REGION", "S3_PREFIX"]
        );
        let moved = config(&[
            ("GROUPS_TO_BACKUP", "7"),
            ("AWS_S3_BUCKET", "other"),
            ("S3_ENDPOINT", "http://127.0.0.1:9000/"),
        ]);
        assert_eq!(
            settings.changed_in(&moved),
            ["GROUPS_TO_BACKUP", "AWS_S3_BUCKET", "S3_ENDPOINT"]
        );
    }

    #[test]
    fn a_runs_backups_count_from_the_first_run_that_put_them_in_the_same_place() {
        let base = config(&[]);
        let first = RunSettings::of(&base, None).after(None);
        assert_eq!(first.backups_from_run, Some(0));
        let stored = first.to_json();
        // Same GitLab, bucket and prefix: the count goes on from the earlier run's.
        let same = RunSettings::of(&base, None).after(Some((4, Some(&stored))));
        assert_eq!(same.backups_from_run, Some(0));
        // A run that kept no such record counts from itself; one without settings, or with
        // another prefix, from the new run.
        let mut old = RunSettings::of(&base, None);
        old.backups_from_run = None;
        let after_old = RunSettings::of(&base, None).after(Some((4, Some(&old.to_json()))));
        assert_eq!(after_old.backups_from_run, Some(4));
        let unknown = RunSettings::of(&base, None).after(Some((4, None)));
        assert_eq!(unknown.backups_from_run, Some(5));
        let moved = RunSettings::of(&config(&[("S3_PREFIX", "other")]), None)
            .after(Some((4, Some(&stored))));
        assert_eq!(moved.backups_from_run, Some(5));
        // The changed-only settings are the run's and read back; changing them is named.
        assert_eq!(RunSettings::from_json(&stored).unwrap(), first);
        let now = config(&[("FULL_BACKUP_EVERY_DAYS", "3")]);
        assert_eq!(first.changed_in(&now), ["FULL_BACKUP_EVERY_DAYS"]);
        let off = config(&[("INCREMENTAL", "false")]);
        assert_eq!(first.changed_in(&off), ["INCREMENTAL"]);
    }
}
