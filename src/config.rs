//! Configuration: reads the worker's settings (the original tool's names and ours) from any
//! name → value lookup, checks every one, and reports all problems at once, each by name.

use std::fmt;
use std::time::Duration;

use url::Url;

use crate::gitlab::{GroupRef, ListingOptions};
use crate::s3::{Bucket, Credentials};

/// The GitLab instance the original tool used when `GITLAB_URL` is not set.
pub const DEFAULT_GITLAB_URL: &str = "https://gitlab.com";
/// GitLab's documented default limit for project exports, per user and minute.
pub const DEFAULT_EXPORTS_PER_MINUTE: u32 = 6;
/// Cloudflare's free plan allows 50 subrequests per invocation.
pub const DEFAULT_SUBREQUESTS_PER_INVOCATION: u32 = 50;
/// Cloudflare's paid plan allows 10,000 subrequests per invocation.
pub const MAX_SUBREQUESTS_PER_INVOCATION: u32 = 10_000;
/// How long a presigned upload URL stays valid unless told otherwise.
pub const DEFAULT_PRESIGN_EXPIRY_HOURS: u64 = 24;
/// SigV4 presigned URLs are valid for at most seven days.
pub const MAX_PRESIGN_EXPIRY_HOURS: u64 = 168;
/// A new run starts this long after the previous one started.
pub const DEFAULT_BACKUP_INTERVAL_HOURS: u64 = 24;
/// How long an accepted export may take to show up in the bucket.
pub const DEFAULT_VERIFY_TIMEOUT_MINUTES: u64 = 180;
/// How many times a project's export is tried before it is reported failed.
pub const DEFAULT_MAX_ATTEMPTS: u64 = 3;
/// The region assumed for a custom S3 endpoint when `AWS_REGION` is not set (R2 and most
/// S3-compatible servers accept it).
pub const DEFAULT_ENDPOINT_REGION: &str = "us-east-1";

/// Every setting the worker reads, with whether it is a secret (set with `wrangler secret put`).
pub const SETTINGS: &[(&str, bool)] = &[
    ("GITLAB_TOKEN", true),
    ("GROUPS_TO_BACKUP", false),
    ("GITLAB_URL", false),
    ("AWS_S3_BUCKET", false),
    ("AWS_ACCESS_KEY_ID", false),
    ("AWS_SECRET_ACCESS_KEY", true),
    ("AWS_SESSION_TOKEN", true),
    ("AWS_REGION", false),
    ("S3_ENDPOINT", false),
    ("S3_PREFIX", false),
    ("EXPORTS_PER_MINUTE", false),
    ("SUBREQUESTS_PER_INVOCATION", false),
    ("PRESIGN_EXPIRY_HOURS", false),
    ("BACKUP_INTERVAL_HOURS", false),
    ("BACKUP_START_HOUR_UTC", false),
    ("INCLUDE_SUBGROUPS", false),
    ("INCLUDE_ARCHIVED", false),
    ("ADMIN_TOKEN", true),
    ("VERIFY_TIMEOUT_MINUTES", false),
    ("MAX_ATTEMPTS", false),
];

/// The checked configuration of one worker.
#[derive(Clone, Debug)]
pub struct Config {
    /// The GitLab instance's base URL, always ending in `/` (it may carry a path prefix).
    pub gitlab_url: Url,
    pub gitlab_token: Secret,
    /// The groups to back up, in the order given, without duplicates.
    pub groups: Vec<GroupRef>,
    pub bucket: Bucket,
    pub credentials: Credentials,
    /// Prepended to every object key; empty or ending in `/`.
    pub s3_prefix: String,
    pub exports_per_minute: u32,
    pub subrequests_per_invocation: u32,
    pub presign_expiry: Duration,
    pub backup_interval: Duration,
    /// When set, runs start only during this hour (UTC).
    pub backup_start_hour_utc: Option<u8>,
    pub listing: ListingOptions,
    /// Guards `POST /run` and `GET /status`; without it they are refused.
    pub admin_token: Option<Secret>,
    /// How long after GitLab accepted an export its object may take to appear.
    pub verify_timeout: Duration,
    /// Export attempts per project per run.
    pub max_attempts: u64,
}

/// A value that must never be printed: `Debug` shows only that it is set.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One setting that is missing or invalid, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub setting: &'static str,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

/// Every problem found in one reading of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration: ")?;
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects problems while the settings are read one by one.
struct Reader<F> {
    lookup: F,
    problems: Vec<Problem>,
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    fn problem(&mut self, setting: &'static str, message: impl Into<String>) {
        self.problems.push(Problem {
            setting,
            message: message.into(),
        });
    }

    /// The trimmed value, or `None` when unset or blank.
    fn optional(&self, setting: &str) -> Option<String> {
        (self.lookup)(setting)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn required(&mut self, setting: &'static str) -> Option<String> {
        let value = self.optional(setting);
        if value.is_none() {
            self.problem(setting, format!("you need to set \"{setting}\""));
        }
        value
    }

    fn number<T>(&mut self, setting: &'static str, default: T, range: (T, T)) -> T
    where
        T: std::str::FromStr + PartialOrd + Copy + fmt::Display,
    {
        let Some(raw) = self.optional(setting) else {
            return default;
        };
        match raw.parse::<T>() {
            Ok(n) if n >= range.0 && n <= range.1 => n,
            _ => {
                self.problem(
                    setting,
                    format!(
                        "{raw:?} is not a whole number from {} to {}",
                        range.0, range.1
                    ),
                );
                default
            }
        }
    }

    fn boolean(&mut self, setting: &'static str, default: bool) -> bool {
        match self.optional(setting).map(|v| v.to_ascii_lowercase()) {
            None => default,
            Some(v) if v == "true" || v == "1" => true,
            Some(v) if v == "false" || v == "0" => false,
            Some(v) => {
                self.problem(setting, format!("{v:?} is neither true nor false"));
                default
            }
        }
    }

    fn url(&mut self, setting: &'static str, raw: &str) -> Option<Url> {
        match Url::parse(raw) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                if url.query().is_some() || url.fragment().is_some() {
                    self.problem(
                        setting,
                        format!("{raw:?} must not have a query or fragment"),
                    );
                    return None;
                }
                Some(with_trailing_slash(url))
            }
            _ => {
                self.problem(
                    setting,
                    format!("{raw:?} is not an http(s) URL such as https://gitlab.example.com"),
                );
                None
            }
        }
    }
}

fn with_trailing_slash(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

impl Config {
    /// Reads and checks every setting through `lookup` (an environment, `wrangler` vars and
    /// secrets, a test map). Returns every problem found, not only the first.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut r = Reader {
            lookup,
            problems: Vec::new(),
        };

        let gitlab_url_raw = r
            .optional("GITLAB_URL")
            .unwrap_or_else(|| DEFAULT_GITLAB_URL.to_owned());
        let gitlab_url = r.url("GITLAB_URL", &gitlab_url_raw);
        let gitlab_token = r.required("GITLAB_TOKEN").map(Secret);

        let groups = match r.required("GROUPS_TO_BACKUP") {
            Some(raw) => match GroupRef::parse_list(&raw) {
                Ok(groups) => Some(groups),
                Err(message) => {
                    r.problem("GROUPS_TO_BACKUP", message);
                    None
                }
            },
            None => None,
        };

        let bucket_name = r.required("AWS_S3_BUCKET");
        let access_key_id = r.required("AWS_ACCESS_KEY_ID");
        let secret_access_key = r.required("AWS_SECRET_ACCESS_KEY");
        let session_token = r.optional("AWS_SESSION_TOKEN");
        let region = r.optional("AWS_REGION");
        let endpoint = match r.optional("S3_ENDPOINT") {
            Some(raw) => r.url("S3_ENDPOINT", &raw),
            None => None,
        };
        let bucket = match bucket_name {
            Some(name) => match Bucket::new(&name, region, endpoint) {
                Ok(bucket) => Some(bucket),
                Err(message) => {
                    r.problem("AWS_S3_BUCKET", message);
                    None
                }
            },
            None => None,
        };

        let s3_prefix = match r.optional("S3_PREFIX") {
            Some(prefix) => {
                let prefix = prefix.trim_start_matches('/');
                if prefix.is_empty() || prefix.ends_with('/') {
                    prefix.to_owned()
                } else {
                    format!("{prefix}/")
                }
            }
            None => String::new(),
        };

        let exports_per_minute =
            r.number("EXPORTS_PER_MINUTE", DEFAULT_EXPORTS_PER_MINUTE, (1, 1000));
        let subrequests_per_invocation = r.number(
            "SUBREQUESTS_PER_INVOCATION",
            DEFAULT_SUBREQUESTS_PER_INVOCATION,
            (2, MAX_SUBREQUESTS_PER_INVOCATION),
        );
        let presign_hours = r.number(
            "PRESIGN_EXPIRY_HOURS",
            DEFAULT_PRESIGN_EXPIRY_HOURS,
            (1, MAX_PRESIGN_EXPIRY_HOURS),
        );
        let interval_hours = r.number(
            "BACKUP_INTERVAL_HOURS",
            DEFAULT_BACKUP_INTERVAL_HOURS,
            (1, 24 * 365),
        );
        let backup_start_hour_utc = r
            .optional("BACKUP_START_HOUR_UTC")
            .is_some()
            .then(|| r.number("BACKUP_START_HOUR_UTC", 0u8, (0, 23)));
        let listing = ListingOptions {
            include_subgroups: r.boolean("INCLUDE_SUBGROUPS", true),
            include_archived: r.boolean("INCLUDE_ARCHIVED", true),
        };
        let admin_token = r.optional("ADMIN_TOKEN").map(Secret);
        let verify_minutes = r.number(
            "VERIFY_TIMEOUT_MINUTES",
            DEFAULT_VERIFY_TIMEOUT_MINUTES,
            (1, 7 * 24 * 60),
        );
        let max_attempts = r.number("MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, (1, 10));

        match (
            gitlab_url,
            gitlab_token,
            groups,
            bucket,
            access_key_id,
            secret_access_key,
        ) {
            (
                Some(gitlab_url),
                Some(gitlab_token),
                Some(groups),
                Some(bucket),
                Some(ak),
                Some(sk),
            ) if r.problems.is_empty() => Ok(Config {
                gitlab_url,
                gitlab_token,
                groups,
                bucket,
                credentials: Credentials {
                    access_key_id: ak,
                    secret_access_key: Secret(sk),
                    session_token: session_token.map(Secret),
                },
                s3_prefix,
                exports_per_minute,
                subrequests_per_invocation,
                presign_expiry: Duration::from_secs(presign_hours * 3600),
                backup_interval: Duration::from_secs(interval_hours * 3600),
                backup_start_hour_utc,
                listing,
                admin_token,
                verify_timeout: Duration::from_secs(verify_minutes * 60),
                max_attempts,
            }),
            _ => Err(ConfigError {
                problems: r.problems,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn minimal() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("GITLAB_TOKEN", "glpat-x"),
            ("GROUPS_TO_BACKUP", "42,12"),
            ("AWS_S3_BUCKET", "gitlab_projects_backup"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
        ])
    }

    fn read(vars: &HashMap<&'static str, &'static str>) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| vars.get(name).map(|v| v.to_string()))
    }

    fn settings_named(err: ConfigError) -> Vec<&'static str> {
        err.problems.into_iter().map(|p| p.setting).collect()
    }

    #[test]
    fn the_original_tools_example_is_a_complete_configuration() {
        let config = read(&minimal()).unwrap();
        assert_eq!(config.gitlab_url.as_str(), "https://gitlab.com/");
        assert_eq!(config.groups, vec![GroupRef::Id(42), GroupRef::Id(12)]);
        assert_eq!(config.exports_per_minute, 6);
        assert_eq!(config.subrequests_per_invocation, 50);
        assert_eq!(config.presign_expiry, Duration::from_secs(24 * 3600));
        assert_eq!(config.s3_prefix, "");
    }

    #[test]
    fn every_missing_required_setting_is_named() {
        let err = read(&HashMap::new()).unwrap_err();
        assert_eq!(
            settings_named(err.clone()),
            vec![
                "GITLAB_TOKEN",
                "GROUPS_TO_BACKUP",
                "AWS_S3_BUCKET",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY"
            ]
        );
        assert!(err
            .to_string()
            .contains("GITLAB_TOKEN: you need to set \"GITLAB_TOKEN\""));
    }

    #[test]
    fn blank_values_count_as_missing() {
        let mut vars = minimal();
        vars.insert("GITLAB_TOKEN", "   ");
        assert_eq!(
            settings_named(read(&vars).unwrap_err()),
            vec!["GITLAB_TOKEN"]
        );
    }

    #[test]
    fn gitlab_url_keeps_its_path_prefix_and_gains_a_trailing_slash() {
        let mut vars = minimal();
        vars.insert("GITLAB_URL", "https://example.org/gitlab");
        assert_eq!(
            read(&vars).unwrap().gitlab_url.as_str(),
            "https://example.org/gitlab/"
        );
        vars.insert("GITLAB_URL", "https://example.org/gitlab/");
        assert_eq!(
            read(&vars).unwrap().gitlab_url.as_str(),
            "https://example.org/gitlab/"
        );
    }

    #[test]
    fn malformed_urls_are_named() {
        for bad in ["gitlab.example.com", "ftp://x", "https://x/?a=b", "http://"] {
            let mut vars = minimal();
            vars.insert("GITLAB_URL", bad);
            vars.insert("S3_ENDPOINT", bad);
            assert_eq!(
                settings_named(read(&vars).unwrap_err()),
                vec!["GITLAB_URL", "S3_ENDPOINT"],
                "{bad}"
            );
        }
    }

    #[test]
    fn numbers_out_of_range_are_named_with_their_range() {
        let mut vars = minimal();
        vars.insert("PRESIGN_EXPIRY_HOURS", "169");
        vars.insert("EXPORTS_PER_MINUTE", "0");
        vars.insert("SUBREQUESTS_PER_INVOCATION", "fifty");
        let err = read(&vars).unwrap_err();
        assert_eq!(
            settings_named(err.clone()),
            vec![
                "EXPORTS_PER_MINUTE",
                "SUBREQUESTS_PER_INVOCATION",
                "PRESIGN_EXPIRY_HOURS"
            ]
        );
        assert!(err.to_string().contains("from 1 to 168"));
    }

    #[test]
    fn s3_prefix_gains_a_trailing_slash() {
        let mut vars = minimal();
        vars.insert("S3_PREFIX", "backups");
        assert_eq!(read(&vars).unwrap().s3_prefix, "backups/");
        vars.insert("S3_PREFIX", "/backups/gitlab/");
        assert_eq!(read(&vars).unwrap().s3_prefix, "backups/gitlab/");
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let config = read(&minimal()).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("glpat-x"));
        assert!(!shown.contains("\"secret\""));
    }

    #[test]
    fn listing_switches_and_start_hour_are_read() {
        let mut vars = minimal();
        let config = read(&vars).unwrap();
        assert_eq!(config.listing, ListingOptions::default());
        assert_eq!(config.backup_start_hour_utc, None);
        vars.insert("INCLUDE_SUBGROUPS", "false");
        vars.insert("INCLUDE_ARCHIVED", "0");
        vars.insert("BACKUP_START_HOUR_UTC", "2");
        let config = read(&vars).unwrap();
        assert!(!config.listing.include_subgroups && !config.listing.include_archived);
        assert_eq!(config.backup_start_hour_utc, Some(2));
        vars.insert("INCLUDE_ARCHIVED", "maybe");
        vars.insert("BACKUP_START_HOUR_UTC", "24");
        assert_eq!(
            settings_named(read(&vars).unwrap_err()),
            vec!["BACKUP_START_HOUR_UTC", "INCLUDE_ARCHIVED"]
        );
    }

    #[test]
    fn the_region_is_left_to_discovery_only_on_aws_without_aws_region() {
        let mut vars = minimal();
        assert_eq!(read(&vars).unwrap().bucket.region, None);
        vars.insert("S3_ENDPOINT", "http://127.0.0.1:9000");
        assert_eq!(
            read(&vars).unwrap().bucket.region.as_deref(),
            Some("us-east-1")
        );
        vars.insert("AWS_REGION", "auto");
        assert_eq!(read(&vars).unwrap().bucket.region.as_deref(), Some("auto"));
    }

    #[test]
    fn every_setting_is_in_the_readme_and_every_secret_in_dev_vars_example() {
        let readme = include_str!("../README.md");
        let dev_vars = include_str!("../.dev.vars.example");
        let wrangler = include_str!("../wrangler.toml");
        for (name, secret) in SETTINGS {
            let row = readme
                .lines()
                .find(|line| line.starts_with(&format!("| `{name}` |")))
                .unwrap_or_else(|| panic!("README's settings table lacks {name}"));
            let kind = if *secret { "| secret |" } else { "| var |" };
            assert!(
                row.ends_with(kind),
                "README says {name} is not a {kind}: {row}"
            );
            if *secret {
                assert!(
                    dev_vars.contains(&format!("{name}=")),
                    ".dev.vars.example lacks {name}"
                );
                assert!(
                    !wrangler.contains(&format!("{name} =")),
                    "wrangler.toml [vars] holds the secret {name}"
                );
            }
        }
    }

    #[test]
    fn bad_group_lists_are_named() {
        let mut vars = minimal();
        vars.insert("GROUPS_TO_BACKUP", "42,,12");
        let err = read(&vars).unwrap_err();
        assert_eq!(settings_named(err), vec!["GROUPS_TO_BACKUP"]);
    }
}
