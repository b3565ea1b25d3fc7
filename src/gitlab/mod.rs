//! GitLab's REST API v4, as far as backups need it: builds the requests (listing a group's
//! projects page by page, requesting an export with an upload URL) and reads the answers.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::http::{excerpt, quoted, redact_url, HttpRequest, HttpResponse, Method};
use crate::secret::Secret;

mod import;
pub use import::{ImportAnswer, ImportState, ImportStatus};

/// GitLab's maximum page size for offset pagination.
pub const MAX_PER_PAGE: u32 = 100;
/// How long GitLab asks a client to wait after a 429 when it sends no `Retry-After`
/// (its export limit is counted per minute).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The longest `Retry-After` taken as given: GitLab's limits are counted per minute or hour,
/// and an absurd value (from a proxy, say) must not stop backups for years or overflow the
/// clock arithmetic that adds it to now.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A group named in `GROUPS_TO_BACKUP`: a numeric id or a full path such as `team/sub`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GroupRef {
    Id(u64),
    Path(String),
}

impl GroupRef {
    /// Parses a comma-separated list, trimming spaces (and a path's outer `/`); refuses empty
    /// entries, entries with white space, control characters or empty segments inside (a
    /// group's name instead of its path, or a list separated by spaces), and duplicates
    /// (paths compared without case, as GitLab finds them).
    pub fn parse_list(raw: &str) -> Result<Vec<GroupRef>, String> {
        let mut groups: Vec<GroupRef> = Vec::new();
        for (index, entry) in raw.split(',').enumerate() {
            let entry = entry.trim().trim_matches('/');
            if entry.is_empty() {
                return Err(format!(
                    "entry {} of {} is empty: give group ids or full paths separated by commas",
                    index + 1,
                    quoted(raw)
                ));
            }
            if entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "entry {} ({}) holds a space or a control character: give group ids or full \
                     paths (as in the group's URL, not its name) separated by commas",
                    index + 1,
                    quoted(entry)
                ));
            }
            if entry
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
            {
                // `..` would also climb out of `groups/:id/` in the API URL.
                return Err(format!(
                    "entry {} ({}) has an empty, \".\" or \"..\" segment: a group's full path is \
                     like team/sub",
                    index + 1,
                    quoted(entry)
                ));
            }
            let group = match entry.parse::<u64>() {
                Ok(id) => GroupRef::Id(id),
                Err(_) => GroupRef::Path(entry.to_owned()),
            };
            let listed = groups.iter().any(|seen| match (seen, &group) {
                (GroupRef::Path(a), GroupRef::Path(b)) => a.eq_ignore_ascii_case(b),
                (a, b) => a == b,
            });
            if listed {
                return Err(format!(
                    "group {} is listed twice",
                    excerpt(&group.to_string())
                ));
            }
            groups.push(group);
        }
        Ok(groups)
    }

    /// The single path segment GitLab's API takes for `:id` (a path's `/` is encoded by the URL
    /// builder as `%2F`).
    fn api_id(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for GroupRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupRef::Id(id) => write!(f, "{id}"),
            GroupRef::Path(path) => f.write_str(path),
        }
    }
}

/// Which projects of a group a listing asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListingOptions {
    pub include_subgroups: bool,
    pub include_archived: bool,
}

impl Default for ListingOptions {
    fn default() -> Self {
        ListingOptions {
            include_subgroups: true,
            include_archived: true,
        }
    }
}

/// A project as a listing page describes it (other fields are ignored).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Project {
    pub id: u64,
    pub path_with_namespace: String,
    /// When GitLab last recorded activity in the project (RFC 3339), moved at most once an
    /// hour and not by every change; absent or unreadable, the project counts as changed.
    #[serde(default)]
    pub last_activity_at: Option<String>,
}

/// One page of a group's projects and where the next one is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectsPage {
    pub projects: Vec<Project>,
    pub next: Option<Url>,
    /// How many pages the listing has (`X-Total-Pages`), when GitLab counts them: it stops
    /// counting above 10,000 projects.
    pub total_pages: Option<u64>,
    /// How many projects the listing has (`X-Total`) as this page was served, when GitLab
    /// counts them: a count that changes between pages means the offsets moved under the
    /// listing.
    pub total: Option<u64>,
}

/// The page number a listing URL asks for (`page`, 1 when absent).
pub fn page_number(url: &Url) -> Option<u64> {
    match url.query_pairs().find(|(name, _)| name == "page") {
        Some((_, value)) => value.parse().ok(),
        None => Some(1),
    }
}

/// The same listing URL, asking for page `page`.
pub fn with_page(url: &Url, page: u64) -> Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(name, _)| name != "page")
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    let mut url = url.clone();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair("page", &page.to_string());
    url
}

/// Why GitLab's answer could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GitLabError {
    /// 401: the token is missing, wrong, expired or revoked.
    Unauthorized,
    /// 403 or 404 on a group: it does not exist or the token cannot see it.
    GroupNotVisible { status: u16 },
    /// 429: wait this long before the next request of this kind.
    RateLimited { retry_after: Duration },
    /// 5xx or a network failure: worth trying again later.
    Unavailable(String),
    /// 404 on a project: it was deleted, or moved where the token cannot see it.
    ProjectGone,
    /// An answer that does not read as GitLab's API documents it.
    BadAnswer(String),
    /// A `Link` header pointed outside the configured GitLab's API path (or held credentials);
    /// not followed, so the token never leaves it.
    ForeignLink(String),
}

impl fmt::Display for GitLabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitLabError::Unauthorized => f.write_str(
                "GitLab refused GITLAB_TOKEN (401): check that it is valid, not expired, and has the api scope",
            ),
            GitLabError::GroupNotVisible { status } => write!(
                f,
                "the group does not exist or GITLAB_TOKEN cannot see it ({status})"
            ),
            GitLabError::RateLimited { retry_after } => write!(
                f,
                "GitLab's rate limit was hit (429); waiting {} s",
                retry_after.as_secs()
            ),
            GitLabError::Unavailable(why) => write!(f, "GitLab is unavailable: {why}"),
            GitLabError::ProjectGone => f.write_str("project gone"),
            GitLabError::BadAnswer(why) => write!(f, "unexpected answer from GitLab: {why}"),
            GitLabError::ForeignLink(url) => write!(
                f,
                "GitLab's pagination points outside GITLAB_URL's API ({url}); not followed"
            ),
        }
    }
}

/// Where GitLab says the caller's latest export of a project stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportStatus {
    /// No export by this user (GitLab also reads this briefly right after the request, and
    /// some versions keep it when the export had an upload URL).
    None,
    /// Queued, started or being regenerated.
    InProgress,
    /// The export was built. Not proof of the upload: a failed upload still reads this.
    Finished,
    /// GitLab could not build the export.
    Failed,
}

impl fmt::Display for ExportStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExportStatus::None => "none",
            ExportStatus::InProgress => "in progress",
            ExportStatus::Finished => "finished",
            ExportStatus::Failed => "failed",
        })
    }
}

/// What became of an export request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportAnswer {
    /// 202: GitLab will build the export and upload it.
    Accepted,
    /// The project cannot be exported; trying again will not help.
    Refused(String),
    /// Not this time: try again later, without counting an attempt.
    Retry(GitLabError),
}

/// Requests to one GitLab instance with one token.
#[derive(Clone, Debug)]
pub struct GitLab {
    api: Url,
    token: Secret,
}

impl GitLab {
    /// `base` is `GITLAB_URL` with a trailing slash (it may have a path prefix).
    pub fn new(base: &Url, token: Secret) -> GitLab {
        let api = base
            .join("api/v4/")
            .expect("a relative path joins onto any http(s) base URL");
        GitLab { api, token }
    }

    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.api.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has path segments")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn request(&self, method: Method, url: Url, body: Option<String>) -> HttpRequest {
        let mut headers = vec![("PRIVATE-TOKEN", self.token.expose().to_owned())];
        if body.is_some() {
            headers.push((
                "Content-Type",
                "application/x-www-form-urlencoded".to_owned(),
            ));
        }
        HttpRequest {
            method,
            url,
            headers,
            body,
        }
    }

    /// The first page of a group's own projects (subgroups per `options`, never shared ones),
    /// oldest first, in pages of 100 with the small "simple" representation.
    pub fn first_projects_page(&self, group: &GroupRef, options: ListingOptions) -> Url {
        let mut url = self.endpoint(&["groups", &group.api_id(), "projects"]);
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("per_page", &MAX_PER_PAGE.to_string())
                .append_pair("order_by", "id")
                .append_pair("sort", "asc")
                .append_pair("simple", "true")
                .append_pair("with_shared", "false")
                .append_pair("include_subgroups", bool_param(options.include_subgroups));
            if !options.include_archived {
                query.append_pair("archived", "false");
            }
        }
        url
    }

    /// A request for one listing page (the first, or a `next` from a previous page).
    pub fn projects_page_request(&self, page: Url) -> HttpRequest {
        self.request(Method::Get, page, None)
    }

    /// Reads a listing page; follows `Link: rel="next"` only within the configured GitLab's API
    /// path, and only on its origin (a link on another origin is rebuilt there).
    pub fn read_projects_page(&self, answer: &HttpResponse) -> Result<ProjectsPage, GitLabError> {
        match answer.status {
            200 => {}
            403 | 404 => {
                return Err(GitLabError::GroupNotVisible {
                    status: answer.status,
                })
            }
            _ => return Err(self.unexpected(answer)),
        }
        if looks_like_html(answer) {
            return Err(GitLabError::BadAnswer(format!(
                "a projects page is an HTML page, not GitLab's API (check GITLAB_URL): {}",
                answer.body_excerpt()
            )));
        }
        let projects: Vec<Project> = serde_json::from_slice(&answer.body).map_err(|e| {
            GitLabError::BadAnswer(format!(
                "a projects page is not the JSON list GitLab documents ({}): {}",
                excerpt(&e.to_string()),
                answer.body_excerpt()
            ))
        })?;
        for (index, project) in projects.iter().enumerate() {
            if let Err(why) = check_project_path(&project.path_with_namespace) {
                return Err(GitLabError::BadAnswer(format!(
                    "project {} of the page (id {}) has the path_with_namespace {}: {why}",
                    index + 1,
                    project.id,
                    quoted(&project.path_with_namespace)
                )));
            }
        }
        let next = match answer.header("link") {
            Some(link) => self.next_link(link)?,
            None => None,
        };
        let count = |name: &str| answer.header(name).and_then(|v| v.trim().parse().ok());
        Ok(ProjectsPage {
            projects,
            next,
            total_pages: count("x-total-pages"),
            total: count("x-total"),
        })
    }

    fn next_link(&self, header: &str) -> Result<Option<Url>, GitLabError> {
        if header.trim().is_empty() {
            // An empty list of links (RFC 8288 allows it): no next page.
            return Ok(None);
        }
        let links = http_link::parse_link_header(header, &self.api).map_err(|e| {
            GitLabError::BadAnswer(format!(
                "unreadable Link header {}: {}",
                quoted(header),
                excerpt(&e.to_string())
            ))
        })?;
        let Some(next) = links.into_iter().find(|link| link.rel == "next") else {
            return Ok(None);
        };
        let target = next.target;
        // A user name or password in the link would travel with the token to whoever they are
        // for: that is not the configured GitLab either.
        let credentials = !target.username().is_empty() || target.password().is_some();
        let http = matches!(target.scheme(), "http" | "https");
        if credentials || !http || !target.path().starts_with(self.api.path()) {
            return Err(GitLabError::ForeignLink(excerpt(&redact_url(
                &without_credentials(target),
            ))));
        }
        // Behind a proxy GitLab may write its links with the scheme and host it was reached at
        // (`http://gitlab.internal/api/v4/…`): the page is asked for at GITLAB_URL's origin,
        // with the link's path and query, so the token goes nowhere else.
        let mut url = self.api.clone();
        url.set_path(target.path());
        url.set_query(target.query());
        Ok(Some(url))
    }

    /// Asks GitLab to export a project and upload the archive to `upload_url` with a PUT.
    pub fn export_request(&self, project_id: u64, upload_url: &Url) -> HttpRequest {
        let url = self.endpoint(&["projects", &project_id.to_string(), "export"]);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("upload[url]", upload_url.as_str())
            .append_pair("upload[http_method]", "PUT")
            .finish();
        self.request(Method::Post, url, Some(body))
    }

    /// Checks that the token is valid: `GET /user`.
    pub fn user_request(&self) -> HttpRequest {
        self.request(Method::Get, self.endpoint(&["user"]), None)
    }

    /// Reads the answer to `GET /user`: the user's name.
    pub fn read_user(&self, answer: &HttpResponse) -> Result<String, GitLabError> {
        #[derive(Deserialize)]
        struct User {
            username: String,
        }
        if answer.status != 200 {
            return Err(self.unexpected(answer));
        }
        if looks_like_html(answer) {
            return Err(GitLabError::BadAnswer(format!(
                "GET /user: an HTML page, not GitLab's API (check GITLAB_URL): {}",
                answer.body_excerpt()
            )));
        }
        serde_json::from_slice::<User>(&answer.body)
            .map(|u| u.username)
            .map_err(|e| {
                GitLabError::BadAnswer(format!(
                    "GET /user: {}: {}",
                    excerpt(&e.to_string()),
                    answer.body_excerpt()
                ))
            })
    }

    /// Asks where the caller's latest export of a project stands.
    /// `GET /projects/:id?statistics=true`: how much the project holds.
    pub fn project_size_request(&self, project_id: u64) -> HttpRequest {
        let mut url = self.endpoint(&["projects", &project_id.to_string()]);
        url.query_pairs_mut().append_pair("statistics", "true");
        self.request(Method::Get, url, None)
    }

    /// The bytes of what a project export carries (repository, wiki, LFS objects, uploads,
    /// snippets), from `GET /projects/:id?statistics=true`.
    pub fn read_project_size(&self, answer: &HttpResponse) -> Result<u64, GitLabError> {
        #[derive(Deserialize)]
        struct Statistics {
            #[serde(default)]
            repository_size: u64,
            #[serde(default)]
            wiki_size: u64,
            #[serde(default)]
            lfs_objects_size: u64,
            #[serde(default)]
            uploads_size: u64,
            #[serde(default)]
            snippets_size: u64,
        }
        #[derive(Deserialize)]
        struct Body {
            statistics: Option<Statistics>,
        }
        let body: Body = self.project_answer(answer, "project statistics")?;
        let s = body.statistics.ok_or_else(|| {
            GitLabError::BadAnswer(
                "the project has no statistics (the token needs Reporter)".into(),
            )
        })?;
        Ok(s.repository_size
            .saturating_add(s.wiki_size)
            .saturating_add(s.lfs_objects_size)
            .saturating_add(s.uploads_size)
            .saturating_add(s.snippets_size))
    }

    /// The JSON body of an answer about one project: a 404 means the project is gone.
    fn project_answer<T: serde::de::DeserializeOwned>(
        &self,
        answer: &HttpResponse,
        what: &str,
    ) -> Result<T, GitLabError> {
        match answer.status {
            200 => {}
            404 => return Err(GitLabError::ProjectGone),
            _ => return Err(self.unexpected(answer)),
        }
        serde_json::from_slice(&answer.body).map_err(|e| {
            GitLabError::BadAnswer(format!(
                "{what}: {}: {}",
                excerpt(&e.to_string()),
                answer.body_excerpt()
            ))
        })
    }

    pub fn export_status_request(&self, project_id: u64) -> HttpRequest {
        let url = self.endpoint(&["projects", &project_id.to_string(), "export"]);
        self.request(Method::Get, url, None)
    }

    /// Reads `GET /projects/:id/export`. A 404 means the project is gone.
    pub fn read_export_status(&self, answer: &HttpResponse) -> Result<ExportStatus, GitLabError> {
        #[derive(Deserialize)]
        struct Body {
            export_status: String,
        }
        let body: Body = self.project_answer(answer, "export status")?;
        match body.export_status.as_str() {
            "none" => Ok(ExportStatus::None),
            "queued" | "started" | "regeneration_in_progress" => Ok(ExportStatus::InProgress),
            "finished" => Ok(ExportStatus::Finished),
            "failed" => Ok(ExportStatus::Failed),
            other => Err(GitLabError::BadAnswer(format!(
                "unknown export_status {}",
                quoted(other)
            ))),
        }
    }

    /// Reads the answer to an export request. A success that is an HTML page (a proxy's or a
    /// login page, not GitLab's API) is not taken as accepted.
    pub fn read_export_answer(&self, answer: &HttpResponse) -> ExportAnswer {
        match answer.status {
            200..=299 if looks_like_html(answer) => {
                ExportAnswer::Retry(GitLabError::BadAnswer(format!(
                    "status {} with an HTML page, not GitLab's API (check GITLAB_URL): {}",
                    answer.status,
                    answer.body_excerpt()
                )))
            }
            200..=299 => ExportAnswer::Accepted,
            403 => ExportAnswer::Refused(
                "the token needs the Maintainer role on this project".to_owned(),
            ),
            404 => ExportAnswer::Refused(GitLabError::ProjectGone.to_string()),
            400 => ExportAnswer::Refused(format!(
                "GitLab refused the export: {}",
                gitlab_message(answer)
            )),
            _ => ExportAnswer::Retry(self.unexpected(answer)),
        }
    }

    /// Errors that any endpoint can answer.
    fn unexpected(&self, answer: &HttpResponse) -> GitLabError {
        match answer.status {
            401 => GitLabError::Unauthorized,
            429 => GitLabError::RateLimited {
                retry_after: retry_after(answer),
            },
            500..=599 => {
                GitLabError::Unavailable(format!("{} {}", answer.status, answer.body_excerpt()))
            }
            status => GitLabError::BadAnswer(format!("status {status}: {}", answer.body_excerpt())),
        }
    }
}

fn bool_param(value: bool) -> &'static str {
    if value {
        "true"
    } else {
        "false"
    }
}

/// `Retry-After` in seconds (GitLab sends 60), at most [`MAX_RETRY_AFTER`], or the default
/// when absent or unreadable.
fn retry_after(answer: &HttpResponse) -> Duration {
    answer
        .header("retry-after")
        .and_then(|v| {
            let v = v.trim();
            // More digits than a u64 holds is still a (very long) number of seconds.
            let all_digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
            v.parse::<u64>().ok().or(all_digits.then_some(u64::MAX))
        })
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
        .unwrap_or(DEFAULT_RETRY_AFTER)
}

/// Whether an answer is an HTML page (by its type, or by its first character: GitLab's API
/// answers JSON, error pages of proxies and of GitLab's web side are HTML).
fn looks_like_html(answer: &HttpResponse) -> bool {
    let by_type = answer
        .header("content-type")
        .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/html"));
    let by_body = answer
        .body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'<');
    by_type || by_body
}

/// Why a project's `path_with_namespace` cannot name its backup, if it cannot: the key
/// `<prefix><path>/<run start>.tar.gz` must stay one object under the prefix, and a URL
/// cannot carry an empty, `.` or `..` segment unchanged.
fn check_project_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("it is empty");
    }
    if path.chars().any(char::is_control) {
        return Err("it holds a control character");
    }
    if path
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err("it has an empty, \".\" or \"..\" segment");
    }
    Ok(())
}

/// `url` without a user name or password, for messages.
fn without_credentials(mut url: Url) -> Url {
    // Both fail only for URLs that cannot have credentials, which then have none.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url
}

/// GitLab's `{"message": …}` or `{"error": …}` text, else the start of the body.
fn gitlab_message(answer: &HttpResponse) -> String {
    #[derive(Deserialize)]
    struct Body {
        message: Option<serde_json::Value>,
        error: Option<serde_json::Value>,
    }
    let text = |v: serde_json::Value| match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    match serde_json::from_slice::<Body>(&answer.body) {
        Ok(Body {
            message: Some(m), ..
        }) => excerpt(&text(m)),
        Ok(Body { error: Some(e), .. }) => excerpt(&text(e)),
        _ => answer.body_excerpt(),
    }
}

#[cfg(test)]
mod tests;
