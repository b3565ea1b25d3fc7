//! GitLab's import of a project from a URL, which restores use: `POST /projects/remote-import`
//! (never with `overwrite`), `GET /projects/:id/import`, and `DELETE /projects/:id` for the
//! scratch projects of restore drills.

use serde::Deserialize;
use url::Url;

use super::{gitlab_message, looks_like_html, GitLab, GitLabError};
use crate::http::{excerpt, HttpRequest, HttpResponse, Method};

/// Where an import stands (`import_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportStatus {
    /// Never imported (or not yet known).
    None,
    Scheduled,
    Started,
    Finished,
    Failed,
}

/// `GET /projects/:id/import`, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportState {
    /// The project's id.
    pub project_id: u64,
    pub status: ImportStatus,
    /// GitLab's `import_error` and its failed relations, for a person.
    pub error: Option<String>,
}

/// What became of a `remote-import` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportAnswer {
    /// 201: the project is created and imports in the background.
    Accepted { project_id: u64, web_url: String },
    /// GitLab will not import this (the path is taken, the namespace is not the token's, the
    /// archive URL failed its check): asking again will not help.
    Refused(String),
    /// Not this time (429, 5xx, no answer): ask again later.
    Retry(GitLabError),
}

impl GitLab {
    /// Asks GitLab to create `namespace/path` from the archive at `archive` (GitLab first sends
    /// it a `HEAD`, then downloads it). Never `overwrite`: a taken path is refused.
    pub fn remote_import_request(
        &self,
        archive: &Url,
        namespace: &str,
        path: &str,
        name: Option<&str>,
    ) -> HttpRequest {
        let url = self.endpoint(&["projects", "remote-import"]);
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("url", archive.as_str())
            .append_pair("namespace", namespace)
            .append_pair("path", path);
        if let Some(name) = name {
            form.append_pair("name", name);
        }
        self.request(Method::Post, url, Some(form.finish()))
    }

    pub fn read_remote_import(&self, answer: &HttpResponse) -> ImportAnswer {
        #[derive(Deserialize)]
        struct Created {
            id: u64,
            #[serde(default)]
            web_url: String,
        }
        match answer.status {
            200..=299 if looks_like_html(answer) => ImportAnswer::Retry(GitLabError::BadAnswer(
                format!(
                    "status {} with an HTML page, not GitLab's API (check GITLAB_URL): {}",
                    answer.status,
                    answer.body_excerpt()
                ),
            )),
            200..=299 => match serde_json::from_slice::<Created>(&answer.body) {
                Ok(created) => ImportAnswer::Accepted {
                    project_id: created.id,
                    web_url: created.web_url,
                },
                Err(e) => ImportAnswer::Refused(format!(
                    "GitLab accepted the import but its answer does not say the new project ({}): {}",
                    excerpt(&e.to_string()),
                    answer.body_excerpt()
                )),
            },
            401 => ImportAnswer::Refused(GitLabError::Unauthorized.to_string()),
            403 => ImportAnswer::Refused(format!(
                "GitLab refused the import (403): the token needs the Maintainer role on the target namespace: {}",
                gitlab_message(answer)
            )),
            400 | 404 | 409 | 422 => ImportAnswer::Refused(format!(
                "GitLab refused the import ({}): {}",
                answer.status,
                gitlab_message(answer)
            )),
            _ => ImportAnswer::Retry(self.unexpected(answer)),
        }
    }

    pub fn import_status_request(&self, project_id: u64) -> HttpRequest {
        let url = self.endpoint(&["projects", &project_id.to_string(), "import"]);
        self.request(Method::Get, url, None)
    }

    /// `GET /projects/:full_path/import`: whether a project is at `full_path` (404: none), and
    /// its import.
    pub fn import_status_at_request(&self, full_path: &str) -> HttpRequest {
        let url = self.endpoint(&["projects", full_path, "import"]);
        self.request(Method::Get, url, None)
    }

    /// Reads `GET /projects/:id/import`. A 404: the new project is gone.
    pub fn read_import_status(&self, answer: &HttpResponse) -> Result<ImportState, GitLabError> {
        #[derive(Deserialize)]
        struct Relation {
            relation_name: Option<String>,
            exception_message: Option<String>,
        }
        #[derive(Deserialize)]
        struct Body {
            id: u64,
            import_status: String,
            import_error: Option<String>,
            #[serde(default)]
            failed_relations: Vec<Relation>,
        }
        let body: Body = self.project_answer(answer, "import status")?;
        let status = match body.import_status.as_str() {
            "none" => ImportStatus::None,
            "scheduled" => ImportStatus::Scheduled,
            "started" => ImportStatus::Started,
            "finished" => ImportStatus::Finished,
            "failed" => ImportStatus::Failed,
            other => {
                return Err(GitLabError::BadAnswer(format!(
                    "unknown import_status {}",
                    crate::http::quoted(other)
                )))
            }
        };
        let relations: Vec<String> = body
            .failed_relations
            .iter()
            .map(|r| {
                format!(
                    "{}: {}",
                    r.relation_name.as_deref().unwrap_or("a relation"),
                    r.exception_message.as_deref().unwrap_or("failed")
                )
            })
            .collect();
        let mut error = body.import_error.map(|e| excerpt(&e));
        if !relations.is_empty() {
            let shown = excerpt(&format!("failed relations: {}", relations.join("; ")));
            error = Some(match error {
                Some(e) => format!("{e}; {shown}"),
                None => shown,
            });
        }
        Ok(ImportState {
            project_id: body.id,
            status,
            error,
        })
    }

    pub fn delete_project_request(&self, project_id: u64) -> HttpRequest {
        let url = self.endpoint(&["projects", &project_id.to_string()]);
        self.request(Method::Delete, url, None)
    }

    /// Reads the answer to `DELETE /projects/:id`: done (202, or 404: gone already), refused
    /// (a reason for a person), or to ask again.
    pub fn read_delete(&self, answer: &HttpResponse) -> Result<(), ImportAnswer> {
        match answer.status {
            200..=299 | 404 => Ok(()),
            400 | 401 | 403 => Err(ImportAnswer::Refused(format!(
                "GitLab refused to delete the project ({}): {}",
                answer.status,
                gitlab_message(answer)
            ))),
            _ => Err(ImportAnswer::Retry(self.unexpected(answer))),
        }
    }

    /// `GET /groups/:id` (without its projects): a namespace asked for by id, for its full path.
    pub fn group_request(&self, group_id: u64) -> HttpRequest {
        let mut url = self.endpoint(&["groups", &group_id.to_string()]);
        url.query_pairs_mut().append_pair("with_projects", "false");
        self.request(Method::Get, url, None)
    }

    /// The group's full path; a 403 or 404: no such group the token can see.
    pub fn read_group_path(&self, answer: &HttpResponse) -> Result<String, GitLabError> {
        #[derive(Deserialize)]
        struct Group {
            full_path: String,
        }
        match answer.status {
            200 if !looks_like_html(answer) => serde_json::from_slice::<Group>(&answer.body)
                .map(|group| group.full_path)
                .map_err(|e| {
                    GitLabError::BadAnswer(format!(
                        "group: {}: {}",
                        excerpt(&e.to_string()),
                        answer.body_excerpt()
                    ))
                }),
            401 => Err(GitLabError::Unauthorized),
            403 | 404 => Err(GitLabError::GroupNotVisible {
                status: answer.status,
            }),
            _ => Err(self.unexpected(answer)),
        }
    }
}
