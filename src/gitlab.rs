//! GitLab's REST API v4, as far as backups need it: builds the requests (listing a group's
//! projects page by page, requesting an export with an upload URL) and reads the answers.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::config::Secret;
use crate::http::{HttpRequest, HttpResponse, Method};

/// GitLab's maximum page size for offset pagination.
pub const MAX_PER_PAGE: u32 = 100;
/// How long GitLab asks a client to wait after a 429 when it sends no `Retry-After`
/// (its export limit is counted per minute).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A group named in `GROUPS_TO_BACKUP`: a numeric id or a full path such as `team/sub`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GroupRef {
    Id(u64),
    Path(String),
}

impl GroupRef {
    /// Parses a comma-separated list, trimming spaces; refuses empty entries and duplicates.
    pub fn parse_list(raw: &str) -> Result<Vec<GroupRef>, String> {
        let mut groups = Vec::new();
        for (index, entry) in raw.split(',').enumerate() {
            let entry = entry.trim().trim_matches('/');
            if entry.is_empty() {
                return Err(format!(
                    "entry {} of {raw:?} is empty: give group ids or full paths separated by commas",
                    index + 1
                ));
            }
            let group = match entry.parse::<u64>() {
                Ok(id) => GroupRef::Id(id),
                Err(_) => GroupRef::Path(entry.to_owned()),
            };
            if groups.contains(&group) {
                return Err(format!("group {group} is listed twice"));
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
            GitLabError::BadAnswer(why) => write!(f, "unexpected answer from GitLab: {why}"),
            GitLabError::ForeignLink(url) => write!(
                f,
                "GitLab's pagination points outside GITLAB_URL ({url}); not followed"
            ),
        }
    }
}

/// Where GitLab says the caller's latest export of a project stands.
#[derive(Clone, Debug, PartialEq, Eq)]
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
        let projects: Vec<Project> = serde_json::from_slice(&answer.body).map_err(|e| {
            GitLabError::BadAnswer(format!(
                "a projects page is not the JSON list GitLab documents ({e}): {}",
                answer.body_excerpt()
            ))
        })?;
        let next = match answer.header("link") {
            Some(link) => self.next_link(link)?,
            None => None,
        };
        Ok(ProjectsPage { projects, next })
    }

    fn next_link(&self, header: &str) -> Result<Option<Url>, GitLabError> {
        let links = http_link::parse_link_header(header, &self.api).map_err(|e| {
            GitLabError::BadAnswer(format!("unreadable Link header {header:?}: {e}"))
        })?;
        let Some(next) = links.into_iter().find(|link| link.rel == "next") else {
            return Ok(None);
        };
        let target = next.target;
        let same_origin = target.origin() == self.api.origin();
        if !same_origin || !target.path().starts_with(self.api.path()) {
            return Err(GitLabError::ForeignLink(target.to_string()));
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
        serde_json::from_slice::<User>(&answer.body)
            .map(|u| u.username)
            .map_err(|e| {
                GitLabError::BadAnswer(format!("GET /user: {e}: {}", answer.body_excerpt()))
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
            404 => return Err(GitLabError::BadAnswer("project gone".to_owned())),
            _ => return Err(self.unexpected(answer)),
        }
        let body: Body = serde_json::from_slice(&answer.body).map_err(|e| {
            GitLabError::BadAnswer(format!("export status: {e}: {}", answer.body_excerpt()))
        })?;
        match body.export_status.as_str() {
            "none" => Ok(ExportStatus::None),
            "queued" | "started" | "regeneration_in_progress" => Ok(ExportStatus::InProgress),
            "finished" => Ok(ExportStatus::Finished),
            "failed" => Ok(ExportStatus::Failed),
            other => Err(GitLabError::BadAnswer(format!(
                "unknown export_status {other:?}"
            ))),
        }
    }

    /// Reads the answer to an export request.
    pub fn read_export_answer(&self, answer: &HttpResponse) -> ExportAnswer {
        match answer.status {
            200..=299 => ExportAnswer::Accepted,
            403 => ExportAnswer::Refused(
                "the token needs the Maintainer role on this project".to_owned(),
            ),
            404 => ExportAnswer::Refused("project gone".to_owned()),
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

/// `Retry-After` in seconds (GitLab sends 60), or the default when absent or unreadable.
fn retry_after(answer: &HttpResponse) -> Duration {
    answer
        .header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_RETRY_AFTER)
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
        }) => text(m),
        Ok(Body { error: Some(e), .. }) => text(e),
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
        assert_eq!(
            read(404, "{}"),
            Err(GitLabError::BadAnswer("project gone".into()))
        );
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
