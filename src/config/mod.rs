//! Configuration: reads the worker's settings (the original tool's names and ours) from any
//! name → value lookup, checks every one, and reports all problems at once, each by name.

use std::fmt;
use std::time::Duration;

use url::Url;

use crate::gitlab::{GroupRef, ListingOptions};
use crate::s3::{Bucket, Credentials};
use crate::secret::Secret;

mod run_settings;
pub use run_settings::RunSettings;

/// The GitLab instance the original tool used when `GITLAB_URL` is not set.
pub const DEFAULT_GITLAB_URL: &str = "https://gitlab.com";
/// GitLab's documented default limit for project exports, per user and minute.
pub const DEFAULT_EXPORTS_PER_MINUTE: u32 = 6;
/// Cloudflare's free plan allows 50 subrequests per invocation.
pub const DEFAULT_SUBREQUESTS_PER_INVOCATION: u32 = 50;
/// Cloudflare's paid plan allows 10,000 subrequests per invocation.
pub const MAX_SUBREQUESTS_PER_INVOCATION: u32 = 10_000;
/// Cloudflare's free plan allows 10 ms of CPU time per invocation.
pub const DEFAULT_CPU_MS_PER_INVOCATION: u32 = 10;
/// Cloudflare's paid plan allows up to five minutes of CPU time per invocation.
pub const MAX_CPU_MS_PER_INVOCATION: u32 = 300_000;
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
    ("CPU_MS_PER_INVOCATION", false),
    ("PRESIGN_EXPIRY_HOURS", false),
    ("BACKUP_INTERVAL_HOURS", false),
    ("BACKUP_START_HOUR_UTC", false),
    ("INCLUDE_SUBGROUPS", false),
    ("INCLUDE_ARCHIVED", false),
    ("ADMIN_TOKEN", true),
    ("VERIFY_TIMEOUT_MINUTES", false),
    ("MAX_ATTEMPTS", false),
    ("DO_ROWS_WRITTEN_PER_DAY", false),
    ("DO_REQUESTS_PER_DAY", false),
    ("RESTORE_NAMESPACES", false),
    ("RESTORE_DRILL_NAMESPACE", false),
    ("RESTORE_DRILL_EVERY_DAYS", false),
    ("WORKER_URL", false),
    ("INCREMENTAL", false),
    ("FULL_BACKUP_EVERY_DAYS", false),
    ("CHANGED_OVERLAP_MINUTES", false),
    ("BACKUP_RETENTION_DAYS", false),
    ("STALE_AFTER_DAYS", false),
];

/// Days after which a project is exported whatever its activity says (changed-only runs).
pub const DEFAULT_FULL_BACKUP_EVERY_DAYS: u64 = 7;
/// How far before a backup's export request a project's `last_activity_at` must lie for the
/// backup to hold it: GitLab moves `last_activity_at` at most once an hour, so never less than
/// an hour.
pub const DEFAULT_CHANGED_OVERLAP_MINUTES: u64 = 120;
pub const MIN_CHANGED_OVERLAP_MINUTES: u64 = 60;
/// `STALE_AFTER_DAYS` without `FULL_BACKUP_EVERY_DAYS` (0): a daily run missed twice.
pub const DEFAULT_STALE_AFTER_DAYS_WITHOUT_FULL: u64 = 2;

/// Days between restore drills, when `RESTORE_DRILL_NAMESPACE` is set.
pub const DEFAULT_RESTORE_DRILL_EVERY_DAYS: u64 = 7;

/// The free plan's daily Durable Object allowances: past one, operations fail until 00:00 UTC.
pub const DEFAULT_DO_ROWS_WRITTEN_PER_DAY: u64 = 100_000;
pub const DEFAULT_DO_REQUESTS_PER_DAY: u64 = 100_000;
/// A daily allowance below this leaves no room beside a day of cron ticks (0: no limit).
pub const MIN_DAILY_ALLOWANCE: u64 = 2_000;
pub const MAX_DAILY_ALLOWANCE: u64 = 1_000_000_000;

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
    /// The CPU time one invocation may use (Cloudflare's plan limit), in milliseconds: it bounds
    /// how many listing pages one tick reads.
    pub cpu_ms_per_invocation: u32,
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
    /// The Durable Object's rows written a day that the worker keeps within (0: no limit).
    pub do_rows_written_per_day: u64,
    /// The Durable Object's requests a day that the worker keeps within (0: no limit).
    pub do_requests_per_day: u64,
    /// The namespaces (full paths) a restore may go into, with everything below them; `None`:
    /// the groups of `GROUPS_TO_BACKUP` named by path and each project's own namespace.
    pub restore_namespaces: Option<Vec<String>>,
    /// Where restore drills go, and how often one starts.
    pub drills: Option<DrillSettings>,
    /// The worker's own address, for the archive URLs of restores it starts itself (drills),
    /// and of every restore when set.
    pub worker_url: Option<Url>,
    /// Changed-only runs (`INCREMENTAL`, `FULL_BACKUP_EVERY_DAYS`, `CHANGED_OVERLAP_MINUTES`);
    /// `None`: every project is exported every run.
    pub changed_only: Option<ChangedOnly>,
    /// A project whose newest verified backup is older than this is reported stale.
    pub stale_after: Duration,
}

/// How a run tells the projects that changed since their backup from those that did not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangedOnly {
    /// Every project is exported at least once in this many days (at most), whatever its
    /// activity says, on a day of the cycle its id picks.
    pub full_every_days: u64,
    /// A backup holds a project whose `last_activity_at` is this many minutes or more before the
    /// backup's export request.
    pub overlap_minutes: u64,
}

/// `RESTORE_DRILL_NAMESPACE` and `RESTORE_DRILL_EVERY_DAYS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrillSettings {
    pub namespace: String,
    pub every: Duration,
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
        let Some(raw) = self.optional(setting) else {
            return default;
        };
        match raw.to_ascii_lowercase().as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                self.problem(
                    setting,
                    format!("{raw:?} is neither true nor false (nor 1 or 0)"),
                );
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
                if !url.username().is_empty() || url.password().is_some() {
                    // Logged and shown as it is: credentials have their own settings.
                    self.problem(
                        setting,
                        "must not hold a user name or password (user:password@)",
                    );
                    return None;
                }
                let odd_host = match url.host() {
                    Some(url::Host::Domain(domain)) => !domain
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')),
                    _ => false,
                };
                // What the URL parser lets through but HTTP libraries (and the signer) refuse.
                if odd_host || url.as_str().parse::<http::Uri>().is_err() {
                    self.problem(
                        setting,
                        format!(
                            "{raw:?} holds characters that are not valid in a host name or URL"
                        ),
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

/// `url` with its path ending in exactly one `/` (`https://h/gitlab//` reads as `https://h/gitlab/`).
fn with_trailing_slash(mut url: Url) -> Url {
    let path = format!("{}/", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

/// Why `region` cannot be `AWS_REGION`, if it cannot. On AWS it is part of the bucket's host
/// name (`<bucket>.s3.<region>.amazonaws.com`), so it must be an AWS region's name; with
/// `S3_ENDPOINT` it only enters the signature's scope (R2's `auto`, MinIO's own names).
fn check_region(region: &str, on_aws: bool) -> Result<(), String> {
    let fits = if on_aws {
        region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    } else {
        region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if fits && region.len() <= 64 && !(on_aws && crate::s3::is_idna_label(region)) {
        return Ok(());
    }
    Err(if on_aws {
        format!("{region:?} is not an AWS region's name such as eu-west-1")
    } else {
        format!("{region:?} is not a region name (letters, digits, '-', '_' or '.', such as us-east-1 or auto)")
    })
}

/// `ADMIN_TOKEN` from its raw value: trimmed, as the presented bearer token is (`echo token |
/// wrangler secret put ADMIN_TOKEN` stores a trailing newline), `None` when unset. Set but blank
/// is a problem, not a token. The fetch handler reads it alone, so that the API answers even when
/// other settings are wrong.
pub fn admin_token(raw: Option<&str>) -> Result<Option<Secret>, Problem> {
    match raw.map(str::trim) {
        None => Ok(None),
        Some("") => Err(Problem {
            setting: "ADMIN_TOKEN",
            message: "is set but blank: give it a long random value, or delete the secret to close the HTTP API"
                .to_owned(),
        }),
        Some(token) => Ok(Some(Secret::new(token))),
    }
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
        let gitlab_url = r.url("GITLAB_URL", &gitlab_url_raw).filter(|url| {
            // The API's path is added to GITLAB_URL; given twice, every request would 404.
            let api_included = url.path().to_ascii_lowercase().ends_with("/api/v4/");
            if api_included {
                r.problem(
                    "GITLAB_URL",
                    format!(
                        "{gitlab_url_raw:?} ends in /api/v4: give the instance's address, such as https://gitlab.example.com"
                    ),
                );
            }
            !api_included
        });
        let gitlab_token = r.required("GITLAB_TOKEN").map(Secret::new);

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
        let endpoint_raw = r.optional("S3_ENDPOINT");
        let endpoint = match &endpoint_raw {
            Some(raw) => r.url("S3_ENDPOINT", raw),
            None => None,
        };
        let region = match region {
            Some(region) => match check_region(&region, endpoint_raw.is_none()) {
                Ok(()) => Some(region),
                Err(message) => {
                    r.problem("AWS_REGION", message);
                    None
                }
            },
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
            Some(raw) => {
                let prefix = raw.trim_start_matches('/');
                let prefix = if prefix.is_empty() || prefix.ends_with('/') {
                    prefix.to_owned()
                } else {
                    format!("{prefix}/")
                };
                // An object URL cannot carry a `.` or `..` segment unchanged: the backups
                // would land elsewhere, even in another bucket.
                if prefix.split('/').any(|s| s == "." || s == "..") {
                    r.problem(
                        "S3_PREFIX",
                        format!(
                            "{raw:?} has a \".\" or \"..\" folder, which object URLs cannot carry"
                        ),
                    );
                } else if prefix.chars().any(char::is_control) {
                    r.problem("S3_PREFIX", format!("{raw:?} holds a control character"));
                }
                prefix
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
        let cpu_ms_per_invocation = r.number(
            "CPU_MS_PER_INVOCATION",
            DEFAULT_CPU_MS_PER_INVOCATION,
            (DEFAULT_CPU_MS_PER_INVOCATION, MAX_CPU_MS_PER_INVOCATION),
        );
        let mut daily = |setting: &'static str, default: u64| {
            let value = r.number(setting, default, (0, MAX_DAILY_ALLOWANCE));
            if value > 0 && value < MIN_DAILY_ALLOWANCE {
                r.problem(
                    setting,
                    format!(
                        "{value} leaves no room beside a day of cron ticks: use 0 for no limit, or at least {MIN_DAILY_ALLOWANCE}"
                    ),
                );
            }
            value
        };
        let do_rows_written_per_day =
            daily("DO_ROWS_WRITTEN_PER_DAY", DEFAULT_DO_ROWS_WRITTEN_PER_DAY);
        let do_requests_per_day = daily("DO_REQUESTS_PER_DAY", DEFAULT_DO_REQUESTS_PER_DAY);
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
        let admin_token = match admin_token((r.lookup)("ADMIN_TOKEN").as_deref()) {
            Ok(token) => token,
            Err(problem) => {
                r.problems.push(problem);
                None
            }
        };
        let verify_minutes = r.number(
            "VERIFY_TIMEOUT_MINUTES",
            DEFAULT_VERIFY_TIMEOUT_MINUTES,
            (1, 7 * 24 * 60),
        );
        let max_attempts = r.number("MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, (1, 10));
        let restore_namespaces = r.optional("RESTORE_NAMESPACES").map(|raw| {
            let namespaces: Vec<String> = raw
                .split(',')
                .map(|n| n.trim().trim_matches('/').to_owned())
                .filter(|n| !n.is_empty())
                .collect();
            for namespace in &namespaces {
                if let Err(why) = crate::restore::check_full_path(namespace) {
                    r.problem(
                        "RESTORE_NAMESPACES",
                        format!("{namespace:?} is not a namespace's full path: {why}"),
                    );
                }
            }
            if namespaces.is_empty() {
                r.problem(
                    "RESTORE_NAMESPACES",
                    "names no namespace: give full paths separated by commas (unset: the backed-up groups)",
                );
            }
            namespaces
        });
        // GitLab must start uploading before the presigned URL expires: waiting longer for the
        // object is waiting for nothing. Values already refused are not compared as well.
        let refused = |setting: &str| r.problems.iter().any(|p| p.setting == setting);
        if !refused("PRESIGN_EXPIRY_HOURS")
            && !refused("VERIFY_TIMEOUT_MINUTES")
            && verify_minutes > presign_hours * 60
        {
            r.problem(
                "VERIFY_TIMEOUT_MINUTES",
                format!(
                    "{verify_minutes} minutes is longer than PRESIGN_EXPIRY_HOURS ({presign_hours} h): \
                     an upload GitLab starts after its URL expired never lands; shorten \
                     VERIFY_TIMEOUT_MINUTES or lengthen PRESIGN_EXPIRY_HOURS"
                ),
            );
        }

        let worker_url = r.optional("WORKER_URL").and_then(|raw| {
            match Url::parse(&raw) {
                Ok(url) if matches!(url.scheme(), "https" | "http") && url.has_host() => {
                    Some(url)
                }
                _ => {
                    r.problem(
                        "WORKER_URL",
                        format!("{raw:?} is not the worker's https address (https://<name>.<subdomain>.workers.dev)"),
                    );
                    None
                }
            }
        });
        let drill_days = r.number(
            "RESTORE_DRILL_EVERY_DAYS",
            DEFAULT_RESTORE_DRILL_EVERY_DAYS,
            (1, 365),
        );
        let drills = r.optional("RESTORE_DRILL_NAMESPACE").and_then(|raw| {
            let namespace = raw.trim_matches('/').to_owned();
            if let Err(why) = crate::restore::check_full_path(&namespace) {
                r.problem(
                    "RESTORE_DRILL_NAMESPACE",
                    format!("{raw:?} is not a group's full path: {why}"),
                );
                return None;
            }
            if (r.lookup)("WORKER_URL").is_none_or(|v| v.trim().is_empty()) {
                r.problem(
                    "RESTORE_DRILL_NAMESPACE",
                    "drills need WORKER_URL, the worker's address GitLab fetches the archive from",
                );
            }
            Some(DrillSettings {
                namespace,
                every: Duration::from_secs(drill_days * 24 * 3600),
            })
        });

        let incremental = r.boolean("INCREMENTAL", true);
        let full_every_days = r.number(
            "FULL_BACKUP_EVERY_DAYS",
            DEFAULT_FULL_BACKUP_EVERY_DAYS,
            (0, 365),
        );
        let overlap_minutes = r.number(
            "CHANGED_OVERLAP_MINUTES",
            DEFAULT_CHANGED_OVERLAP_MINUTES,
            (MIN_CHANGED_OVERLAP_MINUTES, 7 * 24 * 60),
        );
        let changed_only = (incremental && full_every_days > 0).then_some(ChangedOnly {
            full_every_days,
            overlap_minutes,
        });
        let retention_days = r
            .optional("BACKUP_RETENTION_DAYS")
            .is_some()
            .then(|| r.number("BACKUP_RETENTION_DAYS", 0u64, (1, 100 * 365)));
        // A quiet project's newest backup is up to FULL_BACKUP_EVERY_DAYS old, plus the day a
        // run may take to reach it: a lifecycle rule that expires objects sooner deletes it.
        if let (Some(changed_only), Some(retention)) = (changed_only, retention_days) {
            if retention > 0 && changed_only.full_every_days >= retention {
                r.problem(
                    "FULL_BACKUP_EVERY_DAYS",
                    format!(
                        "{} days is not less than BACKUP_RETENTION_DAYS ({retention}): with changed-only \
                         runs a quiet project's only backup is up to {} days old (plus the run that \
                         exports it again), so the bucket's expiry rule would delete it; lower \
                         FULL_BACKUP_EVERY_DAYS below {retention} or lengthen the rule and \
                         BACKUP_RETENTION_DAYS",
                        changed_only.full_every_days, changed_only.full_every_days
                    ),
                );
            }
        }
        let stale_days = r.number(
            "STALE_AFTER_DAYS",
            match changed_only {
                Some(c) => 2 * c.full_every_days,
                None => DEFAULT_STALE_AFTER_DAYS_WITHOUT_FULL,
            },
            (1, 3650),
        );
        // A quiet project's backup is up to FULL_BACKUP_EVERY_DAYS old by design: a shorter
        // bound would report every quiet project, and the report would mean nothing.
        if let Some(changed_only) = changed_only {
            if !r.problems.iter().any(|p| p.setting == "STALE_AFTER_DAYS")
                && stale_days <= changed_only.full_every_days
            {
                r.problem(
                    "STALE_AFTER_DAYS",
                    format!(
                        "{stale_days} days is not more than FULL_BACKUP_EVERY_DAYS ({}): a quiet \
                         project's newest backup is up to that old by design; give more days",
                        changed_only.full_every_days
                    ),
                );
            }
        }

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
                    secret_access_key: Secret::new(sk),
                    session_token: session_token.map(Secret::new),
                },
                s3_prefix,
                exports_per_minute,
                subrequests_per_invocation,
                cpu_ms_per_invocation,
                presign_expiry: Duration::from_secs(presign_hours * 3600),
                backup_interval: Duration::from_secs(interval_hours * 3600),
                backup_start_hour_utc,
                listing,
                admin_token,
                verify_timeout: Duration::from_secs(verify_minutes * 60),
                max_attempts,
                do_rows_written_per_day,
                do_requests_per_day,
                restore_namespaces,
                drills,
                worker_url,
                changed_only,
                stale_after: Duration::from_secs(stale_days * 24 * 3600),
            }),
            _ => Err(ConfigError {
                problems: r.problems,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
