//! GitLab's REST API v4, as far as backups need it: builds the requests (listing a group's
//! projects page by page, requesting an export with an upload URL) and reads the answers.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::http::{excerpt, quoted, redact_url, HttpRequest, HttpResponse, Method};
use crate::secret::Secret;

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
}

/// One page of a group's projects and where the next one is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectsPage {
    pub projects: Vec<Project>,
    pub next: Option<Url>,
    /// How many pages the listing has (`X-Total-Pages`), when GitLab counts them: it stops
    /// counting above 10,000 projects.
    pub total_pages: Option<u64>,
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
    /// A `Link` header pointed outside the configured GitLab; not followed, so the token
    /// never leaves it.
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
                "GitLab's pagination points outside GITLAB_URL ({url}); not followed"
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

    /// Reads a listing page; follows `Link: rel="next"` only within the configured GitLab.
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
        let total_pages = answer
            .header("x-total-pages")
            .and_then(|v| v.trim().parse().ok());
        Ok(ProjectsPage {
            projects,
            next,
            total_pages,
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
        let same_origin = target.origin() == self.api.origin();
        // A user name or password in the link would travel with the token to whoever they are
        // for: that is not the configured GitLab either.
        let credentials = !target.username().is_empty() || target.password().is_some();
        if !same_origin || credentials || !target.path().starts_with(self.api.path()) {
            return Err(GitLabError::ForeignLink(excerpt(&redact_url(
                &without_credentials(target),
            ))));
        }
        Ok(Some(target))
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
        match answer.status {
            200 => {}
            404 => return Err(GitLabError::ProjectGone),
            _ => return Err(self.unexpected(answer)),
        }
        let body: Body = serde_json::from_slice(&answer.body).map_err(|e| {
            GitLabError::BadAnswer(format!(
                "export status: {}: {}",
                excerpt(&e.to_string()),
                answer.body_excerpt()
            ))
        })?;
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
mod tests {
    use super::*;

    fn gitlab(base: &str) -> GitLab {
        GitLab::new(&Url::parse(base).unwrap(), Secret::new("glpat-test"))
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn group_lists_accept_ids_and_paths_with_spaces() {
        assert_eq!(
            GroupRef::parse_list(" 42, team/sub ,/other/ ").unwrap(),
            vec![
                GroupRef::Id(42),
                GroupRef::Path("team/sub".into()),
                GroupRef::Path("other".into())
            ]
        );
    }

    #[test]
    fn group_lists_refuse_empty_entries_and_duplicates() {
        assert!(GroupRef::parse_list("42,,12")
            .unwrap_err()
            .contains("entry 2"));
        assert!(GroupRef::parse_list("").unwrap_err().contains("empty"));
        assert!(GroupRef::parse_list("a/b, a/b")
            .unwrap_err()
            .contains("a/b is listed twice"));
    }

    /// Found by fuzzing (`config`): `GROUPS_TO_BACKUP=42,..` listed
    /// `https://gitlab.com/api/v4/projects`, every project the token can see.
    #[test]
    fn group_paths_with_dot_segments_are_refused() {
        for bad in [
            "..",
            ".",
            "42,..",
            "team/..",
            "./team",
            "team/./sub",
            "../../projects",
        ] {
            let err = GroupRef::parse_list(bad).unwrap_err();
            assert!(err.contains("segment"), "{bad}: {err}");
        }
        let gl = gitlab("https://gitlab.com/");
        for ok in ["team..sub", "...", "a/.b./c"] {
            let groups = GroupRef::parse_list(ok).unwrap();
            let url = gl.first_projects_page(&groups[0], Default::default());
            assert_eq!(url.path_segments().unwrap().count(), 5, "{url}");
            assert!(url.path().starts_with("/api/v4/groups/") && url.path().ends_with("/projects"));
        }
    }

    #[test]
    fn a_group_path_is_one_encoded_segment_and_shared_projects_are_excluded() {
        let url = gitlab("https://gitlab.example.com/")
            .first_projects_page(&GroupRef::Path("team-0/sub-0".into()), Default::default());
        assert_eq!(
            url.as_str(),
            "https://gitlab.example.com/api/v4/groups/team-0%2Fsub-0/projects?per_page=100&order_by=id&sort=asc&simple=true&with_shared=false&include_subgroups=true"
        );
    }

    #[test]
    fn listing_options_map_to_gitlab_parameters() {
        let url = gitlab("https://gitlab.example.com/").first_projects_page(
            &GroupRef::Id(7),
            ListingOptions {
                include_subgroups: false,
                include_archived: false,
            },
        );
        let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert!(query.contains(&("include_subgroups".into(), "false".into())));
        assert!(query.contains(&("archived".into(), "false".into())));
    }

    #[test]
    fn a_path_prefix_in_gitlab_url_is_kept() {
        let url = gitlab("https://example.org/gitlab/")
            .first_projects_page(&GroupRef::Id(7), Default::default());
        assert!(url
            .as_str()
            .starts_with("https://example.org/gitlab/api/v4/groups/7/projects?"));
    }

    #[test]
    fn the_token_travels_in_the_private_token_header_and_is_not_debug_printed() {
        let gl = gitlab("https://gitlab.example.com/");
        let request =
            gl.projects_page_request(gl.first_projects_page(&GroupRef::Id(1), Default::default()));
        assert_eq!(
            request.headers[0],
            ("PRIVATE-TOKEN", "glpat-test".to_owned())
        );
        assert!(!format!("{request:?}").contains("glpat-test"));
    }

    #[test]
    fn a_page_is_read_with_its_next_link() {
        let gl = gitlab("https://gitlab.example.com/");
        let page = gl
            .read_projects_page(&answer(
                200,
                &[(
                    "Link",
                    "<https://gitlab.example.com/api/v4/groups/1/projects?page=2&per_page=100>; rel=\"next\", <https://gitlab.example.com/api/v4/groups/1/projects?page=1&per_page=100>; rel=\"first\"",
                )],
                r#"[{"id": 5, "path_with_namespace": "a/b", "name": "b", "extra": {"x": 1}}]"#,
            ))
            .unwrap();
        assert_eq!(
            page.projects,
            vec![Project {
                id: 5,
                path_with_namespace: "a/b".into()
            }]
        );
        assert_eq!(
            page.next.unwrap().as_str(),
            "https://gitlab.example.com/api/v4/groups/1/projects?page=2&per_page=100"
        );
    }

    #[test]
    fn the_last_page_has_no_next() {
        let gl = gitlab("https://gitlab.example.com/");
        let page = gl
            .read_projects_page(&answer(
                200,
                &[(
                    "Link",
                    "<https://gitlab.example.com/api/v4/groups/1/projects?page=1>; rel=\"first\"",
                )],
                "[]",
            ))
            .unwrap();
        assert_eq!(page.next, None);
        assert!(gl
            .read_projects_page(&answer(200, &[], "[]"))
            .unwrap()
            .next
            .is_none());
    }

    #[test]
    fn a_next_link_to_another_host_or_outside_the_api_is_not_followed() {
        let gl = gitlab("https://gitlab.example.com/gitlab/");
        for link in [
            "<https://evil.example.net/api/v4/groups/1/projects?page=2>; rel=\"next\"",
            "<http://gitlab.example.com/gitlab/api/v4/groups/1/projects?page=2>; rel=\"next\"",
            "<https://gitlab.example.com:8443/gitlab/api/v4/groups/1/projects?page=2>; rel=\"next\"",
            "<https://gitlab.example.com/other/api/v4/groups/1/projects?page=2>; rel=\"next\"",
        ] {
            let err = gl
                .read_projects_page(&answer(200, &[("Link", link)], "[]"))
                .unwrap_err();
            assert!(matches!(err, GitLabError::ForeignLink(_)), "{link}: {err:?}");
        }
    }

    #[test]
    fn html_and_odd_json_pages_are_bad_answers_not_panics() {
        let gl = gitlab("https://gitlab.example.com/");
        for body in [
            "<html>502 Bad Gateway</html>",
            "{\"message\": \"x\"}",
            "[{\"id\": \"five\"}]",
            "[{\"id\": 5}]",
            "[{\"id\": 5, \"path_with_namespace\": \"a/b\"",
        ] {
            let err = gl.read_projects_page(&answer(200, &[], body)).unwrap_err();
            assert!(matches!(err, GitLabError::BadAnswer(_)), "{body}: {err:?}");
        }
    }

    #[test]
    fn listing_errors_are_classified() {
        let gl = gitlab("https://gitlab.example.com/");
        let read = |status| {
            gl.read_projects_page(&answer(status, &[], "{}"))
                .unwrap_err()
        };
        assert_eq!(read(401), GitLabError::Unauthorized);
        assert_eq!(read(404), GitLabError::GroupNotVisible { status: 404 });
        assert_eq!(read(403), GitLabError::GroupNotVisible { status: 403 });
        assert!(matches!(read(503), GitLabError::Unavailable(_)));
        assert_eq!(
            read(429),
            GitLabError::RateLimited {
                retry_after: DEFAULT_RETRY_AFTER
            }
        );
    }

    #[test]
    fn the_upload_url_survives_form_encoding() {
        let gl = gitlab("https://gitlab.example.com/");
        let upload = Url::parse(
            "http://127.0.0.1:9000/bucket/a/b.tar.gz?X-Amz-Credential=AK%2F2013&X-Amz-Signature=abc=",
        )
        .unwrap();
        let request = gl.export_request(9, &upload);
        assert_eq!(
            request.url.as_str(),
            "https://gitlab.example.com/api/v4/projects/9/export"
        );
        let body = request.body.unwrap();
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("upload[url]".to_owned(), upload.to_string()),
                ("upload[http_method]".to_owned(), "PUT".to_owned())
            ]
        );
    }

    #[test]
    fn export_statuses_are_read_as_gitlab_documents_them() {
        let gl = gitlab("https://gitlab.example.com/");
        let read = |status, body: &str| gl.read_export_status(&answer(status, &[], body));
        let body = |s: &str| format!(r#"{{"id":1,"name":"a","export_status":"{s}"}}"#);
        assert_eq!(read(200, &body("none")), Ok(ExportStatus::None));
        for s in ["queued", "started", "regeneration_in_progress"] {
            assert_eq!(read(200, &body(s)), Ok(ExportStatus::InProgress));
        }
        assert_eq!(read(200, &body("finished")), Ok(ExportStatus::Finished));
        assert_eq!(read(200, &body("failed")), Ok(ExportStatus::Failed));
        assert!(matches!(
            read(200, &body("exploded")),
            Err(GitLabError::BadAnswer(_))
        ));
        assert!(matches!(
            read(200, "<html>"),
            Err(GitLabError::BadAnswer(_))
        ));
        assert_eq!(read(404, "{}"), Err(GitLabError::ProjectGone));
        assert!(matches!(read(502, ""), Err(GitLabError::Unavailable(_))));
        assert_eq!(
            gl.export_status_request(9).url.as_str(),
            "https://gitlab.example.com/api/v4/projects/9/export"
        );
    }

    #[test]
    fn the_user_check_reads_the_username() {
        let gl = gitlab("https://gitlab.example.com/");
        assert_eq!(
            gl.read_user(&answer(200, &[], r#"{"id":1,"username":"backup-bot"}"#)),
            Ok("backup-bot".into())
        );
        assert_eq!(
            gl.read_user(&answer(401, &[], "{}")),
            Err(GitLabError::Unauthorized)
        );
        assert_eq!(
            gl.user_request().url.as_str(),
            "https://gitlab.example.com/api/v4/user"
        );
    }

    fn bytes_answer(status: u16, headers: &[(&str, &str)], body: Vec<u8>) -> HttpResponse {
        HttpResponse {
            body,
            ..answer(status, headers, "")
        }
    }

    /// Error messages quote at most an excerpt of an answer, never the whole of it.
    fn assert_short(err: &impl fmt::Display) {
        let shown = err.to_string();
        assert!(
            shown.chars().count() < 700,
            "{} chars: {}…",
            shown.len(),
            &shown[..300]
        );
    }

    const HTML_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Sign in · GitLab</title></head>\
                             <body>Please sign in</body></html>";

    #[test]
    fn html_pages_with_status_200_are_clear_bad_answers_everywhere() {
        let gl = gitlab("https://gitlab.example.com/");
        for headers in [&[][..], &[("Content-Type", "text/html; charset=utf-8")][..]] {
            let page = answer(200, headers, HTML_PAGE);
            for err in [
                gl.read_projects_page(&page).unwrap_err(),
                gl.read_user(&page).unwrap_err(),
                gl.read_export_status(&page).unwrap_err(),
            ] {
                assert!(matches!(err, GitLabError::BadAnswer(_)), "{err:?}");
                assert!(err.to_string().contains("Sign in"), "{err}");
            }
            assert!(gl
                .read_projects_page(&page)
                .unwrap_err()
                .to_string()
                .contains("HTML"));
            // Not taken as accepted: retried later, without using up an attempt.
            for status in [200, 202] {
                match gl.read_export_answer(&answer(status, headers, HTML_PAGE)) {
                    ExportAnswer::Retry(GitLabError::BadAnswer(why)) => {
                        assert!(why.contains("HTML"), "{why}")
                    }
                    other => panic!("{status}: {other:?}"),
                }
            }
        }
        // An HTML type with a JSON body is still HTML; a JSON 202 with no body is accepted.
        assert!(matches!(
            gl.read_export_answer(&answer(202, &[("content-type", "TEXT/HTML")], "{}")),
            ExportAnswer::Retry(_)
        ));
        assert_eq!(
            gl.read_export_answer(&answer(202, &[], "")),
            ExportAnswer::Accepted
        );
    }

    #[test]
    fn html_pages_with_status_5xx_are_unavailable_with_a_short_excerpt() {
        let gl = gitlab("https://gitlab.example.com/");
        let huge = format!("<html>{}</html>", "502 Bad Gateway ".repeat(400_000));
        for status in [500, 502, 503, 504, 599] {
            let page = answer(status, &[("content-type", "text/html")], &huge);
            for err in [
                gl.read_projects_page(&page).unwrap_err(),
                gl.read_user(&page).unwrap_err(),
                gl.read_export_status(&page).unwrap_err(),
            ] {
                assert!(matches!(err, GitLabError::Unavailable(_)), "{err:?}");
                assert!(err.to_string().contains(&format!("{status} <html>502 Bad")));
                assert_short(&err);
            }
            match gl.read_export_answer(&page) {
                ExportAnswer::Retry(err @ GitLabError::Unavailable(_)) => assert_short(&err),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn truncated_json_is_a_bad_answer_for_every_reader() {
        let gl = gitlab("https://gitlab.example.com/");
        let page =
            r#"[{"id": 5, "path_with_namespace": "a/b"}, {"id": 6, "path_with_namespace": "a/c"}]"#;
        let user = r#"{"id": 1, "username": "backup-bot"}"#;
        let status = r#"{"id": 1, "export_status": "finished"}"#;
        type Reader<'a> = &'a dyn Fn(&HttpResponse) -> Result<(), GitLabError>;
        let readers: [(&str, Reader); 3] = [
            (page, &|a| gl.read_projects_page(a).map(|_| ())),
            (user, &|a| gl.read_user(a).map(|_| ())),
            (status, &|a| gl.read_export_status(a).map(|_| ())),
        ];
        for (full, read) in readers {
            assert_eq!(read(&answer(200, &[], full)), Ok(()), "{full}");
            for end in 0..full.len() {
                let err = read(&answer(200, &[], &full[..end])).unwrap_err();
                assert!(matches!(err, GitLabError::BadAnswer(_)), "{end}: {err:?}");
            }
        }
    }

    #[test]
    fn huge_json_answers_are_read_or_refused_with_short_messages() {
        let gl = gitlab("https://gitlab.example.com/");
        // A 5 MB page of valid projects is read.
        let entry = |id: usize| {
            format!(
                r#"{{"id":{id},"path_with_namespace":"group-{id}/project-{id}","description":"{}"}}"#,
                "x".repeat(40)
            )
        };
        let mut big: Vec<String> = (1..=50_000).map(entry).collect();
        let body = format!("[{}]", big.join(","));
        assert!(body.len() > 5_000_000);
        let page = gl.read_projects_page(&answer(200, &[], &body)).unwrap();
        assert_eq!(page.projects.len(), 50_000);
        // One odd entry at its end spoils the page, with a short message.
        big.push(r#"{"id":"50001","path_with_namespace":"g/p"}"#.to_owned());
        let body = format!("[{}]", big.join(","));
        let err = gl.read_projects_page(&answer(200, &[], &body)).unwrap_err();
        assert!(matches!(err, GitLabError::BadAnswer(_)));
        assert_short(&err);
        // 5 MB strings where GitLab puts short ones.
        let long = "y".repeat(5 << 20);
        for body in [
            format!(r#"[{{"id":"{long}","path_with_namespace":"a/b"}}]"#),
            format!(r#"[{{"id":1,"path_with_namespace":"a/{long}/.."}}]"#),
            format!(r#"[{{"id":1,"path_with_namespace":["{long}"]}}]"#),
        ] {
            let err = gl.read_projects_page(&answer(200, &[], &body)).unwrap_err();
            assert!(matches!(err, GitLabError::BadAnswer(_)), "{err:?}");
            assert_short(&err);
        }
        let err = gl
            .read_export_status(&answer(
                200,
                &[],
                &format!(r#"{{"export_status":"{long}"}}"#),
            ))
            .unwrap_err();
        assert_short(&err);
        let err = gl
            .read_export_status(&answer(
                200,
                &[],
                &format!(r#"{{"export_status":["{long}"]}}"#),
            ))
            .unwrap_err();
        assert_short(&err);
        let err = gl
            .read_user(&answer(
                200,
                &[],
                &format!(r#"{{"username":{{"{long}":1}}}}"#),
            ))
            .unwrap_err();
        assert_short(&err);
        match gl.read_export_answer(&answer(400, &[], &format!(r#"{{"message":"{long}"}}"#))) {
            ExportAnswer::Refused(why) => assert!(why.len() < 700, "{}", why.len()),
            other => panic!("{other:?}"),
        }
        match gl.read_export_answer(&answer(
            400,
            &[],
            &format!(r#"{{"error":{{"a":"{long}"}}}}"#),
        )) {
            ExportAnswer::Refused(why) => assert!(why.len() < 700, "{}", why.len()),
            other => panic!("{other:?}"),
        }
        let err = gl.read_projects_page(&answer(418, &[], &long)).unwrap_err();
        assert_short(&err);
    }

    #[test]
    fn missing_or_odd_project_fields_are_bad_answers() {
        let gl = gitlab("https://gitlab.example.com/");
        for body in [
            r#"[{"id": "5", "path_with_namespace": "a/b"}]"#,
            r#"[{"id": -5, "path_with_namespace": "a/b"}]"#,
            r#"[{"id": 5.5, "path_with_namespace": "a/b"}]"#,
            r#"[{"id": 1e3, "path_with_namespace": "a/b"}]"#,
            r#"[{"id": 18446744073709551616, "path_with_namespace": "a/b"}]"#,
            r#"[{"id": null, "path_with_namespace": "a/b"}]"#,
            r#"[{"id": 5, "path_with_namespace": null}]"#,
            r#"[{"id": 5, "path_with_namespace": 7}]"#,
            r#"[{"path_with_namespace": "a/b"}]"#,
            r#"[{"id": 5, "path": "b"}]"#,
            r#"[5]"#,
            r#"[null]"#,
            r#"[[]]"#,
            r#"null"#,
            r#"{}"#,
            r#""""#,
            r#""#,
            r#"[] []"#,
        ] {
            let err = gl.read_projects_page(&answer(200, &[], body)).unwrap_err();
            assert!(matches!(err, GitLabError::BadAnswer(_)), "{body}: {err:?}");
        }
        // Unknown fields and a duplicate key are GitLab's business; a duplicated id field is not.
        assert!(gl
            .read_projects_page(&answer(
                200,
                &[],
                r#"[{"id": 5, "id": 6, "path_with_namespace": "a/b"}]"#
            ))
            .is_err());
    }

    #[test]
    fn project_paths_that_cannot_name_a_backup_are_refused_with_the_project() {
        let gl = gitlab("https://gitlab.example.com/");
        for path in [
            "",
            "/",
            "a//b",
            "/a/b",
            "a/b/",
            ".",
            "..",
            "../b",
            "a/./b",
            "a/..",
            "a/\\u0000b",
            "a\\nb",
            "a/\\u007f",
        ] {
            let body = format!(
                r#"[{{"id": 4, "path_with_namespace": "ok/one"}}, {{"id": 5, "path_with_namespace": "{path}"}}]"#
            );
            let err = gl.read_projects_page(&answer(200, &[], &body)).unwrap_err();
            let GitLabError::BadAnswer(why) = &err else {
                panic!("{path:?}: {err:?}")
            };
            assert!(
                why.contains("project 2 of the page (id 5)"),
                "{path:?}: {why}"
            );
        }
        for path in ["a/b", "ä/ö", "a.b/..c/...", "_runs/x", "a b/c%2Fd"] {
            let body = format!(r#"[{{"id": 5, "path_with_namespace": "{path}"}}]"#);
            let page = gl.read_projects_page(&answer(200, &[], &body)).unwrap();
            assert_eq!(page.projects[0].path_with_namespace, path);
        }
    }

    #[test]
    fn non_utf8_bytes_in_paths_are_bad_answers() {
        let gl = gitlab("https://gitlab.example.com/");
        let mut body = br#"[{"id": 5, "path_with_namespace": "team/"#.to_vec();
        body.extend_from_slice(&[0xff, 0xfe, b'x', 0xc3]);
        body.extend_from_slice(br#""}]"#);
        let err = gl
            .read_projects_page(&bytes_answer(200, &[], body.clone()))
            .unwrap_err();
        assert!(matches!(err, GitLabError::BadAnswer(_)), "{err:?}");
        assert!(err.to_string().contains("team/\u{FFFD}"), "{err}");
        let err = gl
            .read_user(&bytes_answer(200, &[], body.clone()))
            .unwrap_err();
        assert!(matches!(err, GitLabError::BadAnswer(_)), "{err:?}");
        // An excerpt cut inside a character, and a body of only invalid bytes.
        let mut wide = "é".repeat(1000).into_bytes();
        wide.push(0xff);
        for bytes in [wide, vec![0xff; 10_000], vec![b' '; 10_000], Vec::new()] {
            let err = gl
                .read_projects_page(&bytes_answer(502, &[], bytes))
                .unwrap_err();
            assert_short(&err);
        }
    }

    #[test]
    fn a_next_link_with_credentials_or_escaping_the_api_is_not_followed() {
        let gl = gitlab("https://gitlab.example.com/gitlab/");
        for link in [
            "<https://user:pw@gitlab.example.com/gitlab/api/v4/groups/1/projects?page=2>; rel=\"next\"",
            "<https://glpat@gitlab.example.com/gitlab/api/v4/groups/1/projects?page=2>; rel=\"next\"",
            "<//evil.example.net/gitlab/api/v4/groups/1/projects?page=2>; rel=\"next\"",
            "</other/api/v4/groups/1/projects?page=2>; rel=\"next\"",
            "<https://gitlab.example.com/gitlab/api/v4/../../other/api/v4/x>; rel=\"next\"",
            "<https://gitlab.example.com/gitlab/api/v4/%2e%2e/%2E%2E/x>; rel=\"next\"",
            "<https://gitlab.example.com/gitlab/api/v4evil/groups>; rel=\"next\"",
            "<https://gitlab.example.com./gitlab/api/v4/groups/1/projects>; rel=\"next\"",
            "<https://gitlab.example.com.evil.net/gitlab/api/v4/groups>; rel=\"next\"",
            "<https://evil.net\\@gitlab.example.com/gitlab/api/v4/groups>; rel=\"next\"",
            "<data:text/plain,hello>; rel=\"next\"",
            "<file:///gitlab/api/v4/groups>; rel=\"next\"",
            "<https://127.0.0.1/gitlab/api/v4/groups>; rel=\"next\"",
            "<https://gitlab.example.com/gitlab/api/v4/groups?page=1>; rel=\"first\", \
             <https://evil.example.net/gitlab/api/v4/groups?page=2>; rel=\"next\"",
        ] {
            let err = gl
                .read_projects_page(&answer(200, &[("link", link)], "[]"))
                .unwrap_err();
            assert!(matches!(err, GitLabError::ForeignLink(_)), "{link}: {err:?}");
            assert!(!err.to_string().contains("pw@"), "{err}");
        }
    }

    #[test]
    fn next_links_are_found_among_other_relations_and_spellings() {
        let gl = gitlab("https://gitlab.example.com/gitlab/");
        let next = "https://gitlab.example.com/gitlab/api/v4/groups/1/projects?page=2";
        for link in [
            format!("<{next}>; rel=next"),
            format!("<{next}>; REL=\"NEXT\""),
            format!("<{next}>; rel=\"prev next\""),
            format!("  <{next}> ;rel=\"next\" ; title=\"Page 2\"  "),
            format!(
                "<https://gitlab.example.com/gitlab/api/v4/groups/1/projects?page=1>; rel=\"first\", \
                 <{next}>; rel=\"next\", \
                 <https://gitlab.example.com/gitlab/api/v4/groups/1/projects?page=9>; rel=\"last\""
            ),
            "</gitlab/api/v4/groups/1/projects?page=2>; rel=\"next\"".to_owned(),
            "<groups/1/projects?page=2>; rel=\"next\"".to_owned(),
            format!("<{}>; rel=\"next\"", next.replace("gitlab.example.com", "GITLAB.example.COM:443")),
        ] {
            let page = gl
                .read_projects_page(&answer(200, &[("Link", &link)], "[]"))
                .unwrap_or_else(|e| panic!("{link}: {e:?}"));
            assert_eq!(page.next.as_ref().map(Url::as_str), Some(next), "{link}");
        }
        for no_next in [
            "",
            "   ",
            "<https://gitlab.example.com/gitlab/api/v4/x>; rel=\"last\"",
        ] {
            let page = gl
                .read_projects_page(&answer(200, &[("Link", no_next)], "[]"))
                .unwrap();
            assert_eq!(page.next, None, "{no_next:?}");
        }
    }

    #[test]
    fn malformed_link_headers_are_short_bad_answers() {
        let gl = gitlab("https://gitlab.example.com/");
        let huge = format!("<https://gitlab.example.com/api/v4/{}", "p".repeat(5 << 20));
        for link in [
            "garbage",
            "https://gitlab.example.com/api/v4/groups/1/projects?page=2; rel=\"next\"",
            "<https://gitlab.example.com/api/v4/groups/1/projects?page=2",
            "<https://gitlab.example.com/api/v4/x>; rel=\"next",
            "<https://gitlab.example.com/api/v4/x>; rel=\"next\\",
            "<https://gitlab.example.com/api/v4/x> rel=\"next\"",
            "<https://gitlab.example.com/api/v4/x>; rel=\"next\" <y>",
            "<https://gitlab.example.com/api/v4/x>; rel=\"n\u{e9}xt\"",
            "<https://gitlab.example.com/api/v4/x>; title*=UTF-16''abc; rel=next",
            "<https://gitlab.example.com/api/v4/x>; title*=UTF-8''%ff; rel=next",
            "<http://[::1>; rel=\"next\"",
            "<https://gitlab.example.com:99999/api/v4/x>; rel=\"next\"",
            "<https://gitlab.example.com/api/v4/x>; rel=\"next\",",
            ",",
            &huge,
        ] {
            let err = gl
                .read_projects_page(&answer(200, &[("Link", link)], "[]"))
                .unwrap_err();
            assert!(
                matches!(err, GitLabError::BadAnswer(_)),
                "{link:.80}: {err:?}"
            );
            assert_short(&err);
        }
        // A foreign link with a 5 MB URL is refused with a short message too.
        let huge = format!(
            "<https://evil.example.net/{}>; rel=\"next\"",
            "p".repeat(5 << 20)
        );
        let err = gl
            .read_projects_page(&answer(200, &[("Link", &huge)], "[]"))
            .unwrap_err();
        assert!(matches!(err, GitLabError::ForeignLink(_)));
        assert_short(&err);
    }

    #[test]
    fn odd_user_answers_are_bad_answers() {
        let gl = gitlab("https://gitlab.example.com/");
        for body in [
            r#"{"id": 1}"#,
            r#"{"username": null}"#,
            r#"{"username": 7}"#,
            r#"[{"username": "a"}]"#,
            r#"{"username": "a""#,
            "",
        ] {
            let err = gl.read_user(&answer(200, &[], body)).unwrap_err();
            assert!(matches!(err, GitLabError::BadAnswer(_)), "{body}: {err:?}");
        }
        assert_eq!(
            gl.read_user(&answer(
                200,
                &[],
                r#"{"id": "1", "username": "bot", "x": null}"#
            )),
            Ok("bot".into())
        );
        assert!(matches!(
            gl.read_user(&answer(
                302,
                &[("location", "https://gitlab.example.com/users/sign_in")],
                ""
            )),
            Err(GitLabError::BadAnswer(_))
        ));
    }

    #[test]
    fn retry_after_is_capped_and_read_only_as_seconds() {
        let gl = gitlab("https://gitlab.example.com/");
        for (value, expected) in [
            ("17", Duration::from_secs(17)),
            (" 0 ", Duration::ZERO),
            ("3600", MAX_RETRY_AFTER),
            ("3601", MAX_RETRY_AFTER),
            ("18446744073709551615", MAX_RETRY_AFTER),
            ("99999999999999999999999999999", MAX_RETRY_AFTER),
            ("-1", DEFAULT_RETRY_AFTER),
            ("1.5", DEFAULT_RETRY_AFTER),
            ("", DEFAULT_RETRY_AFTER),
            ("Wed, 21 Oct 2015 07:28:00 GMT", DEFAULT_RETRY_AFTER),
        ] {
            let err = gl
                .read_projects_page(&answer(429, &[("Retry-After", value)], ""))
                .unwrap_err();
            assert_eq!(
                err,
                GitLabError::RateLimited {
                    retry_after: expected
                },
                "{value:?}"
            );
        }
    }

    #[test]
    fn odd_export_statuses_are_bad_answers() {
        let gl = gitlab("https://gitlab.example.com/");
        for body in [
            r#"{"id": 1}"#,
            r#"{"export_status": null}"#,
            r#"{"export_status": 3}"#,
            r#"{"export_status": "FINISHED"}"#,
            r#"{"export_status": ""}"#,
        ] {
            let err = gl.read_export_status(&answer(200, &[], body)).unwrap_err();
            assert!(matches!(err, GitLabError::BadAnswer(_)), "{body}: {err:?}");
            assert_ne!(err, GitLabError::ProjectGone);
        }
    }

    #[test]
    fn export_answers_are_classified_as_the_issue_asks() {
        let gl = gitlab("https://gitlab.example.com/");
        let read = |status, headers: &[(&str, &str)], body| {
            gl.read_export_answer(&answer(status, headers, body))
        };
        assert_eq!(
            read(202, &[], r#"{"message":"202 Accepted"}"#),
            ExportAnswer::Accepted
        );
        assert_eq!(
            read(403, &[], "{}"),
            ExportAnswer::Refused("the token needs the Maintainer role on this project".into())
        );
        assert_eq!(
            read(404, &[], "{}"),
            ExportAnswer::Refused("project gone".into())
        );
        assert_eq!(
            read(
                400,
                &[],
                r#"{"message":"The project size exceeds the export limit."}"#
            ),
            ExportAnswer::Refused(
                "GitLab refused the export: The project size exceeds the export limit.".into()
            )
        );
        assert_eq!(
            read(429, &[("Retry-After", "17")], "{}"),
            ExportAnswer::Retry(GitLabError::RateLimited {
                retry_after: Duration::from_secs(17)
            })
        );
        assert_eq!(
            read(429, &[("Retry-After", "soon")], "{}"),
            ExportAnswer::Retry(GitLabError::RateLimited {
                retry_after: DEFAULT_RETRY_AFTER
            })
        );
        assert!(matches!(
            read(502, &[], "<html>"),
            ExportAnswer::Retry(GitLabError::Unavailable(_))
        ));
        assert_eq!(
            read(401, &[], "{}"),
            ExportAnswer::Retry(GitLabError::Unauthorized)
        );
    }
}
