//! What a restore is asked for and may do, without I/O: `POST /restore`'s body, checked field
//! by field; the target's defaults (the project's own namespace, `<path>-restored-<time>`); the
//! namespaces a restore may go into; and the capability that lets GitLab fetch the one archive.
//!
//! A restore never replaces a project (no `overwrite`), goes only into a namespace the operator
//! allowed, and hands GitLab a URL that holds no secret of the worker: a random capability,
//! kept in the store only as its SHA-256, bound to one restore and its one key.

use std::fmt;

use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::macros::format_description;
use time::OffsetDateTime;
use url::Url;

/// GitLab's longest project path and name.
pub const MAX_PATH_CHARS: usize = 255;

/// A project or namespace, as the operator names it: GitLab's numeric id, or its full path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ref {
    Id(u64),
    Path(String),
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ref::Id(id) => write!(f, "{id}"),
            Ref::Path(path) => f.write_str(path),
        }
    }
}

/// `POST /restore`'s body, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreRequest {
    /// The project whose backup is restored.
    pub project: Ref,
    /// The object key of the backup; `None`: the project's newest verified backup.
    pub backup: Option<String>,
    /// Where the new project goes; `None`: the project's own namespace.
    pub namespace: Option<Ref>,
    /// The new project's path; `None`: `<path>-restored-<YYYYMMDD-HHMM>`.
    pub path: Option<String>,
    /// The new project's name; `None`: GitLab's default (the path).
    pub name: Option<String>,
}

/// A field of the request that is missing or wrong, and why (answered 400).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn bad(field: &'static str, message: impl Into<String>) -> BadRequest {
    BadRequest {
        field,
        message: message.into(),
    }
}

const FIELDS: [&str; 5] = ["project", "backup", "namespace", "path", "name"];

impl RestoreRequest {
    /// Reads the JSON body; the first problem found is named by its field.
    pub fn parse(body: &[u8]) -> Result<RestoreRequest, BadRequest> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            bad(
                "body",
                format!("not JSON ({e}): send {{\"project\": \"group/project\"}}"),
            )
        })?;
        let Value::Object(fields) = value else {
            return Err(bad("body", "not a JSON object"));
        };
        if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(bad(
                "body",
                format!(
                    "unknown field {unknown:?}: the fields are {}",
                    FIELDS.join(", ")
                ),
            ));
        }
        let text = |field: &'static str| -> Result<Option<String>, BadRequest> {
            match fields.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.trim().is_empty() => Err(bad(field, "is empty")),
                Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
                Some(other) => Err(bad(field, format!("must be a string, not {other}"))),
            }
        };
        let reference = |field: &'static str| -> Result<Option<Ref>, BadRequest> {
            match fields.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(id) if id > 0 => Ok(Some(Ref::Id(id))),
                    _ => Err(bad(field, format!("{n} is not a GitLab id"))),
                },
                Some(Value::String(_)) => {
                    let raw = text(field)?.unwrap_or_default();
                    match raw.parse::<u64>() {
                        Ok(id) if id > 0 => Ok(Some(Ref::Id(id))),
                        _ => {
                            let path = raw.trim_matches('/').to_owned();
                            check_full_path(&path).map_err(|why| bad(field, why))?;
                            Ok(Some(Ref::Path(path)))
                        }
                    }
                }
                Some(other) => Err(bad(
                    field,
                    format!("must be a full path or a numeric id, not {other}"),
                )),
            }
        };
        let project = reference("project")?.ok_or_else(|| {
            bad(
                "project",
                "is required: the project's full path or numeric id",
            )
        })?;
        let backup = text("backup")?;
        if let Some(key) = &backup {
            if !key.ends_with(".tar.gz") || key.chars().any(char::is_control) {
                return Err(bad(
                    "backup",
                    format!("{key:?} is not a backup's object key (they end in .tar.gz)"),
                ));
            }
        }
        let namespace = reference("namespace")?;
        let path = text("path")?;
        if let Some(path) = &path {
            check_segment(path).map_err(|why| bad("path", why))?;
        }
        let name = text("name")?;
        if let Some(name) = &name {
            if name.chars().count() > MAX_PATH_CHARS || name.chars().any(char::is_control) {
                return Err(bad(
                    "name",
                    format!("at most {MAX_PATH_CHARS} characters, none a control character"),
                ));
            }
        }
        Ok(RestoreRequest {
            project,
            backup,
            namespace,
            path,
            name,
        })
    }
}

/// Whether `segment` can be a GitLab path: letters, digits, `_`, `-` and `.`, not starting with
/// `-` or `.`, not ending with `.` or `-`… as GitLab's `PathRegex` has it, and not `.git` or
/// `.atom` at the end.
pub fn check_segment(segment: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if segment.is_empty() || segment.chars().count() > MAX_PATH_CHARS {
        return Err(format!("a path has 1 to {MAX_PATH_CHARS} characters"));
    }
    if !segment.chars().all(allowed) {
        return Err(format!(
            "{segment:?} may hold only letters, digits, '_', '-' and '.'"
        ));
    }
    if segment.starts_with(['-', '.']) || segment.ends_with(['-', '.']) {
        return Err(format!(
            "{segment:?} may not start with '-' or '.' or end with '-' or '.'"
        ));
    }
    let lower = segment.to_ascii_lowercase();
    if lower.ends_with(".git") || lower.ends_with(".atom") {
        return Err(format!("{segment:?} may not end in .git or .atom"));
    }
    Ok(())
}

/// Whether `path` can be a full path: segments that [`check_segment`] takes, split by `/`.
pub fn check_full_path(path: &str) -> Result<(), String> {
    path.split('/').try_for_each(check_segment)
}

/// The namespace a project's full path lives in (`acme/tools/cli` → `acme/tools`).
pub fn namespace_of(project_path: &str) -> Option<&str> {
    project_path
        .rsplit_once('/')
        .map(|(namespace, _)| namespace)
}

/// Whether a restore may go into `namespace` (a full path): it is one of `allowed` or inside
/// one of them, compared as GitLab does, without regard to case.
pub fn namespace_allowed(namespace: &str, allowed: &[String]) -> bool {
    let namespace = namespace.trim_matches('/').to_ascii_lowercase();
    allowed.iter().any(|root| {
        let root = root.trim_matches('/').to_ascii_lowercase();
        !root.is_empty()
            && (namespace == root
                || namespace
                    .strip_prefix(&root)
                    .is_some_and(|rest| rest.starts_with('/')))
    })
}

/// The new project's path when none is asked for: `<path>-restored-<YYYYMMDD-HHMM>` (UTC), cut
/// to GitLab's length.
pub fn default_path(project_path: &str, now_ms: u64) -> String {
    stamped_path(project_path, "restored", now_ms)
}

/// A drill's scratch project path: `<path>-drill-<YYYYMMDD-HHMM>` (UTC).
pub fn drill_path(project_path: &str, now_ms: u64) -> String {
    stamped_path(project_path, "drill", now_ms)
}

fn stamped_path(project_path: &str, word: &str, now_ms: u64) -> String {
    let last = project_path.rsplit('/').next().unwrap_or(project_path);
    let format = format_description!("[year][month][day]-[hour][minute]");
    let stamp = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default();
    let suffix = format!("-{word}-{stamp}");
    let keep = MAX_PATH_CHARS.saturating_sub(suffix.len());
    let base: String = last.chars().take(keep).collect();
    format!("{}{suffix}", base.trim_end_matches(['-', '.']))
}

/// The unguessable part of an archive URL: 32 random bytes the caller hands in (the core reads
/// no random source), written as hex. The store keeps only its [`Capability::digest`].
#[derive(Clone, PartialEq, Eq)]
pub struct Capability(String);

impl fmt::Debug for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Capability(…)")
    }
}

impl Capability {
    pub fn from_random(bytes: [u8; 32]) -> Capability {
        Capability(hex(&bytes))
    }

    /// What the store keeps: the SHA-256 of the capability, in hex.
    pub fn digest(&self) -> String {
        digest_of(&self.0)
    }

    /// The URL GitLab fetches the archive of restore `id` from, on `origin`.
    pub fn archive_url(&self, origin: &Url, id: u64) -> Url {
        let mut url = origin.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .clear()
                .extend(["restore", "archive", &id.to_string(), &self.0]);
        }
        url
    }
}

/// Whether `presented` (from an archive URL) is the capability whose digest the store keeps, in
/// constant time.
pub fn capability_matches(presented: &str, stored_digest: &str) -> bool {
    bool::from(
        digest_of(presented)
            .as_bytes()
            .ct_eq(stored_digest.as_bytes()),
    )
}

fn digest_of(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<RestoreRequest, BadRequest> {
        RestoreRequest::parse(body.as_bytes())
    }

    #[test]
    fn a_project_by_path_or_id_with_every_field_defaulted() {
        let request = parse(r#"{"project": "acme/tools/cli"}"#).unwrap();
        assert_eq!(request.project, Ref::Path("acme/tools/cli".into()));
        assert_eq!(
            (
                request.backup,
                request.namespace,
                request.path,
                request.name
            ),
            (None, None, None, None)
        );
        assert_eq!(parse(r#"{"project": 42}"#).unwrap().project, Ref::Id(42));
        assert_eq!(parse(r#"{"project": "42"}"#).unwrap().project, Ref::Id(42));
        let full = parse(
            r#"{"project": 7, "backup": "gitlab/acme/x/2026-11-30-02-00-00.tar.gz",
                "namespace": "restores", "path": "x-copy", "name": "X (copy)"}"#,
        )
        .unwrap();
        assert_eq!(full.namespace, Some(Ref::Path("restores".into())));
        assert_eq!(full.path.as_deref(), Some("x-copy"));
        assert_eq!(full.name.as_deref(), Some("X (copy)"));
    }

    #[test]
    fn each_bad_field_is_named() {
        for (body, field) in [
            ("", "body"),
            ("[1]", "body"),
            (r#"{"project": "a/b", "overwrite": true}"#, "body"),
            ("{}", "project"),
            (r#"{"project": ""}"#, "project"),
            (r#"{"project": 0}"#, "project"),
            (r#"{"project": -3}"#, "project"),
            (r#"{"project": true}"#, "project"),
            (r#"{"project": "acme/../etc"}"#, "project"),
            (r#"{"project": "a/b", "backup": "a/b/notes.txt"}"#, "backup"),
            (r#"{"project": "a/b", "backup": 5}"#, "backup"),
            (r#"{"project": "a/b", "namespace": "a b"}"#, "namespace"),
            (r#"{"project": "a/b", "path": "x/y"}"#, "path"),
            (r#"{"project": "a/b", "path": "-x"}"#, "path"),
            (r#"{"project": "a/b", "path": "x.git"}"#, "path"),
            (r#"{"project": "a/b", "name": "a\u0000b"}"#, "name"),
        ] {
            let error = parse(body).unwrap_err();
            assert_eq!(error.field, field, "{body}: {error}");
        }
    }

    #[test]
    fn a_restore_goes_only_into_an_allowed_namespace_or_below_it() {
        let allowed = vec!["acme".to_owned(), "scratch/drills".to_owned()];
        assert!(namespace_allowed("acme", &allowed));
        assert!(namespace_allowed("ACME/tools", &allowed));
        assert!(namespace_allowed("scratch/drills/x", &allowed));
        assert!(!namespace_allowed("acme-public", &allowed));
        assert!(!namespace_allowed("scratch", &allowed));
        assert!(!namespace_allowed("other/acme", &allowed));
        assert!(!namespace_allowed("acme", &[String::new()]));
        assert_eq!(namespace_of("acme/tools/cli"), Some("acme/tools"));
        assert_eq!(namespace_of("cli"), None);
    }

    #[test]
    fn the_default_path_names_the_restore_time_and_is_a_valid_path() {
        // 2026-11-30 02:05 UTC.
        let at = 1_796_004_300_000;
        assert_eq!(
            default_path("acme/tools/cli", at),
            "cli-restored-20261130-0205"
        );
        assert_eq!(drill_path("acme/tools/cli", at), "cli-drill-20261130-0205");
        let long = default_path(&format!("acme/{}", "p".repeat(300)), at);
        assert_eq!(long.chars().count(), MAX_PATH_CHARS);
        check_segment(&long).unwrap();
    }

    #[test]
    fn the_capability_is_kept_as_a_digest_and_only_it_opens_the_url() {
        let capability = Capability::from_random([7; 32]);
        let other = Capability::from_random([8; 32]);
        let stored = capability.digest();
        let url = capability.archive_url(
            &Url::parse("https://backup.example.workers.dev/x?y").unwrap(),
            12,
        );
        let token = url.path_segments().unwrap().next_back().unwrap().to_owned();
        assert_eq!(
            url.as_str(),
            format!("https://backup.example.workers.dev/restore/archive/12/{token}")
        );
        assert_eq!(token.len(), 64);
        assert!(!stored.contains(&token) && stored != token);
        assert!(capability_matches(&token, &stored));
        let other_url = other.archive_url(&url, 12);
        let other_token = other_url.path_segments().unwrap().next_back().unwrap();
        assert!(!capability_matches(other_token, &stored));
        assert!(!capability_matches("", &stored));
        assert!(!format!("{capability:?}").contains(&token));
    }
}
