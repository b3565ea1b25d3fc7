//! The simulated GitLab.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use percent_encoding::percent_decode_str;
use serde_json::json;
use url::Url;

use super::{Fault, FaultPlan, Rng, GITLAB_URL, MINUTE, REFUSAL_400, SECOND, TOKEN};
use crate::gitlab::GroupRef;
use crate::http::{HttpRequest, HttpResponse, Method};

pub(crate) struct SimGroup {
    pub(crate) id: u64,
    pub(crate) full_path: String,
    parent: Option<usize>,
}

pub(crate) struct SimProject {
    id: u64,
    path_with_namespace: String,
    group: usize,
    shared_with: Vec<usize>,
    pub(crate) archived: bool,
    /// `last_activity_at`, when the listing carries it (most tests leave it out, so that every
    /// project counts as changed).
    pub(crate) last_activity_ms: Option<u64>,
}

/// An export request as GitLab saw it.
#[derive(Clone, Debug)]
pub(crate) struct ExportSeen {
    /// When the worker sent it.
    pub(crate) sent_ms: u64,
    /// When it reached GitLab.
    pub(crate) at_ms: u64,
    pub(crate) project_id: u64,
    pub(crate) status: u16,
    /// The worker never got the answer (lost on the way back, timed out, or the worker died).
    pub(crate) answer_lost: bool,
    /// Whether the 429 came from GitLab's own limit (not an injected fault).
    limited_by_gitlab: bool,
    pub(crate) upload_url: Option<Url>,
}

/// A listing request as GitLab saw it.
#[derive(Clone, Debug)]
pub(crate) struct ListingSeen {
    pub(crate) at_ms: u64,
    /// The group as the request named it (id or decoded full path).
    pub(crate) group: String,
    pub(crate) page: u64,
    pub(crate) status: u16,
    pub(crate) query: HashMap<String, String>,
}

struct RateWindow {
    opened_ms: u64,
    count: u32,
}

pub(crate) struct SimGitLab {
    pub(crate) base: Url,
    pub(crate) token: String,
    pub(crate) groups: Vec<SimGroup>,
    projects: Vec<SimProject>,
    next_id: u64,
    /// The server's largest page, whatever `per_page` asks (GitLab's is 100).
    pub(crate) page_cap: u64,
    /// Export requests per user and window.
    export_limit: u32,
    /// Whether GitLab's own 429s carry `Retry-After` (until its window ends).
    pub(crate) retry_after_header: bool,
    windows: HashMap<String, RateWindow>,
    /// Projects whose exports GitLab always refuses, with the status.
    pub(crate) refusals: HashMap<u64, u16>,
    pub(crate) export_faults: FaultPlan,
    pub(crate) listing_faults: FaultPlan,
    pub(crate) exports: Vec<ExportSeen>,
    pub(crate) listings: Vec<ListingSeen>,
    /// After so many listing requests, this project is deleted (a change during a listing).
    pub(crate) delete_after_listings: Vec<(usize, u64)>,
    /// Faults of the other GitLab requests (`GET /user`, `GET /projects/:id/export`).
    pub(crate) status_faults: FaultPlan,
    /// What `GET /projects/:id?statistics=true` reports a project holds, in bytes (default: a
    /// small project).
    pub(crate) sizes: BTreeMap<u64, u64>,
    /// Those requests: (arrival, project id).
    pub(crate) size_checks: Vec<(u64, u64)>,
    /// How long GitLab takes to build an export and upload it, in ms (inclusive range).
    pub(crate) build_ms: (u64, u64),
    pub(crate) build_rng: Rng,
    /// Projects whose exports GitLab can never build (status `failed`).
    pub(crate) build_failures: BTreeSet<u64>,
    /// Projects whose uploads never reach the bucket although GitLab reports `finished`.
    pub(crate) lost_uploads: BTreeSet<u64>,
    /// Projects whose uploads land as something else than GitLab's gzip archive sent as
    /// `application/gzip` (a proxy in between, a broken GitLab).
    pub(crate) odd_uploads: BTreeMap<u64, OddUpload>,
    /// Whether a built export reads `none` (GitLab deleted its file after the upload) instead
    /// of `finished`.
    pub(crate) none_when_built: bool,
    /// Exports GitLab accepted, in the order it accepted them.
    pub(crate) jobs: Vec<ExportJob>,
    /// `GET /projects/:id/export` as GitLab saw them: (arrival, project, status answered).
    pub(crate) status_checks: Vec<(u64, u64, u16)>,
    /// `GET /user` arrivals.
    pub(crate) user_checks: Vec<u64>,
}

/// An upload that lands as something else than a gzip archive as `application/gzip`.
#[derive(Clone, Debug)]
pub(crate) struct OddUpload {
    pub(crate) size: u64,
    /// Its first bytes (at least the few the worker reads, or all of them).
    pub(crate) start: Vec<u8>,
    pub(crate) content_type: Option<&'static str>,
}

/// An export GitLab accepted: it builds the archive and PUTs it to the upload URL.
#[derive(Clone, Debug)]
pub(crate) struct ExportJob {
    pub(crate) project_id: u64,
    accepted_ms: u64,
    /// When the build ends (and the upload, if any, is in the bucket).
    pub(crate) ready_ms: u64,
    pub(crate) upload_url: Url,
    pub(crate) fails: bool,
    pub(crate) upload_lost: bool,
    pub(crate) delivered: bool,
}

fn json_answer(status: u16, body: serde_json::Value) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

fn too_many(retry_after_s: Option<u64>) -> HttpResponse {
    let mut answer = json_answer(
        429,
        json!({"message": {"error": "This endpoint has been requested too many times. Try again later."}}),
    );
    if let Some(seconds) = retry_after_s {
        answer
            .headers
            .push(("retry-after".into(), seconds.to_string()));
    }
    answer
}

fn error_answer(status: u16) -> HttpResponse {
    match status {
        403 => json_answer(403, json!({"message": "403 Forbidden"})),
        404 => json_answer(404, json!({"message": "404 Project Not Found"})),
        400 => json_answer(400, json!({"message": REFUSAL_400})),
        500..=599 => HttpResponse {
            status,
            headers: vec![("content-type".into(), "text/html".into())],
            body: format!("<html><body><h1>{status}</h1>We're sorry, GitLab is taking too much time to respond.</body></html>").into_bytes(),
        },
        _ => json_answer(status, json!({"message": format!("{status}")})),
    }
}

pub(crate) fn is_export(request: &HttpRequest) -> bool {
    request.method == Method::Post && request.url.path().ends_with("/export")
}

impl SimGitLab {
    pub(crate) fn new(export_limit: u32) -> SimGitLab {
        SimGitLab {
            base: Url::parse(GITLAB_URL).unwrap(),
            token: TOKEN.into(),
            groups: Vec::new(),
            projects: Vec::new(),
            next_id: 0,
            page_cap: 100,
            export_limit,
            retry_after_header: true,
            windows: HashMap::new(),
            refusals: HashMap::new(),
            export_faults: FaultPlan::default(),
            listing_faults: FaultPlan::default(),
            exports: Vec::new(),
            listings: Vec::new(),
            delete_after_listings: Vec::new(),
            status_faults: FaultPlan::default(),
            sizes: BTreeMap::new(),
            size_checks: Vec::new(),
            build_ms: (2 * SECOND, 8 * SECOND),
            build_rng: Rng::new(0xB1D),
            build_failures: BTreeSet::new(),
            lost_uploads: BTreeSet::new(),
            odd_uploads: BTreeMap::new(),
            none_when_built: false,
            jobs: Vec::new(),
            status_checks: Vec::new(),
            user_checks: Vec::new(),
        }
    }

    pub(crate) fn add_group(&mut self, path: &str, parent: Option<usize>) -> usize {
        let full_path = match parent {
            Some(p) => format!("{}/{path}", self.groups[p].full_path),
            None => path.to_owned(),
        };
        let id = 1_000 + 17 * self.groups.len() as u64;
        self.groups.push(SimGroup {
            id,
            full_path,
            parent,
        });
        self.groups.len() - 1
    }

    pub(crate) fn add_projects(&mut self, group: usize, count: usize) -> Vec<u64> {
        (0..count)
            .map(|_| {
                // Ids with gaps, as in a real instance.
                self.next_id += 1 + self.next_id % 3;
                let id = self.next_id;
                self.projects.push(SimProject {
                    id,
                    path_with_namespace: format!("{}/project-{id}", self.groups[group].full_path),
                    group,
                    shared_with: Vec::new(),
                    archived: false,
                    last_activity_ms: None,
                });
                id
            })
            .collect()
    }

    pub(crate) fn project_mut(&mut self, id: u64) -> &mut SimProject {
        self.projects.iter_mut().find(|p| p.id == id).unwrap()
    }

    /// An event in the project at `now_ms` (a push, a comment): like GitLab, `last_activity_at`
    /// moves only when it is an hour old or more (`Event::RESET_PROJECT_ACTIVITY_INTERVAL`).
    pub(crate) fn activity(&mut self, id: u64, now_ms: u64) {
        let project = self.project_mut(id);
        if project
            .last_activity_ms
            .is_none_or(|at| at + 3_600_000 <= now_ms)
        {
            project.last_activity_ms = Some(now_ms);
        }
    }

    pub(crate) fn path_of(&self, id: u64) -> &str {
        &self
            .projects
            .iter()
            .find(|p| p.id == id)
            .unwrap()
            .path_with_namespace
    }

    pub(crate) fn share(&mut self, project: u64, group: usize) {
        self.project_mut(project).shared_with.push(group);
    }

    fn within(&self, mut group: usize, ancestor: usize) -> bool {
        loop {
            if group == ancestor {
                return true;
            }
            match self.groups[group].parent {
                Some(parent) => group = parent,
                None => return false,
            }
        }
    }

    fn find_group(&self, key: &str) -> Option<usize> {
        match key.parse::<u64>() {
            Ok(id) => self.groups.iter().position(|g| g.id == id),
            Err(_) => self.groups.iter().position(|g| g.full_path == key),
        }
    }

    /// The projects a listing of `group` returns, by id ascending.
    fn members(
        &self,
        group: usize,
        with_shared: bool,
        include_subgroups: bool,
        archived: Option<bool>,
    ) -> Vec<&SimProject> {
        let mut found: Vec<&SimProject> = self
            .projects
            .iter()
            .filter(|p| {
                let own = if include_subgroups {
                    self.within(p.group, group)
                } else {
                    p.group == group
                };
                own || (with_shared && p.shared_with.contains(&group))
            })
            .filter(|p| archived.is_none_or(|a| p.archived == a))
            .collect();
        found.sort_by_key(|p| p.id);
        found
    }

    /// What backing up `groups` must cover, computed from the model (not through the API):
    /// their own projects (and their subgroups' when asked), never shared ones.
    pub(crate) fn own_projects(
        &self,
        groups: &[GroupRef],
        include_subgroups: bool,
        include_archived: bool,
    ) -> BTreeSet<u64> {
        let archived = (!include_archived).then_some(false);
        groups
            .iter()
            .filter_map(|g| self.find_group(&g.to_string()))
            .flat_map(|g| self.members(g, false, include_subgroups, archived))
            .map(|p| p.id)
            .collect()
    }

    /// The API path below `/api/v4/`, segment by segment, decoded.
    fn api_segments(&self, url: &Url) -> Option<Vec<String>> {
        let rest = url.path().strip_prefix(self.base.path())?;
        let rest = rest.strip_prefix("api/v4/")?;
        Some(
            rest.split('/')
                .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
                .collect(),
        )
    }

    pub(crate) fn serve(
        &mut self,
        request: &HttpRequest,
        at_ms: u64,
        fault: Option<Fault>,
    ) -> HttpResponse {
        let authorized = request.headers.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case("private-token") && *value == self.token
        });
        if !authorized {
            return json_answer(401, json!({"message": "401 Unauthorized"}));
        }
        let Some(segments) = self.api_segments(&request.url) else {
            return json_answer(404, json!({"error": "404 Not Found"}));
        };
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        match (request.method, segments.as_slice()) {
            (Method::Get, ["groups", group, "projects"]) => self.list(request, group, at_ms, fault),
            (Method::Post, ["projects", project, "export"]) => {
                self.export(request, project, at_ms, fault)
            }
            (Method::Get, ["projects", project, "export"]) => {
                self.export_status(project, at_ms, fault)
            }
            (Method::Get, ["projects", project]) => {
                let id: u64 = project.parse().unwrap_or(0);
                self.size_checks.push((at_ms, id));
                if !self.projects.iter().any(|p| p.id == id) {
                    return error_answer(404);
                }
                let size = self.sizes.get(&id).copied().unwrap_or(10_000 + id);
                json_answer(
                    200,
                    json!({"id": id, "statistics": {"repository_size": size, "wiki_size": 0,
                        "lfs_objects_size": 0, "uploads_size": 0, "snippets_size": 0}}),
                )
            }
            (Method::Get, ["user"]) => {
                self.user_checks.push(at_ms);
                match fault {
                    Some(Fault::TooMany(seconds)) => too_many(seconds),
                    Some(Fault::Status(status)) => error_answer(status),
                    _ => json_answer(200, json!({"id": 1, "username": "backup-bot"})),
                }
            }
            _ => json_answer(404, json!({"error": "404 Not Found"})),
        }
    }

    fn list(
        &mut self,
        request: &HttpRequest,
        key: &str,
        at_ms: u64,
        fault: Option<Fault>,
    ) -> HttpResponse {
        let query: HashMap<String, String> = request.url.query_pairs().into_owned().collect();
        let number = |name: &str, default: u64| {
            query
                .get(name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(default)
        };
        let page = number("page", 1).max(1);
        let per_page = number("per_page", 20).clamp(1, 100).min(self.page_cap);
        let mut seen = ListingSeen {
            at_ms,
            group: key.to_owned(),
            page,
            status: 200,
            query: query.clone(),
        };
        let answer = match (fault, self.find_group(key)) {
            (Some(Fault::TooMany(seconds)), _) => too_many(seconds),
            (Some(Fault::Status(status)), _) => error_answer(status),
            (_, None) => json_answer(404, json!({"message": "404 Group Not Found"})),
            (_, Some(group)) => {
                let with_shared = query.get("with_shared").is_none_or(|v| v != "false");
                let include_subgroups = query.get("include_subgroups").is_some_and(|v| v == "true");
                let archived = query.get("archived").map(|v| v == "true");
                let mut members = self.members(group, with_shared, include_subgroups, archived);
                if query.get("sort").is_none_or(|v| v != "asc") {
                    members.reverse();
                }
                let total = members.len() as u64;
                let from = ((page - 1) * per_page).min(total) as usize;
                let to = (page * per_page).min(total) as usize;
                let body: Vec<serde_json::Value> = members[from..to]
                    .iter()
                    .map(|p| {
                        let name = p.path_with_namespace.rsplit('/').next().unwrap();
                        let namespace = &self.groups[p.group];
                        let mut project = json!({
                            "id": p.id,
                            "description": null,
                            "name": name,
                            "name_with_namespace": p.path_with_namespace.replace('/', " / "),
                            "path": name,
                            "path_with_namespace": p.path_with_namespace,
                            "created_at": "2024-01-01T00:00:00.000Z",
                            "default_branch": "main",
                            "tag_list": [],
                            "topics": [],
                            "web_url": format!("{}{}", GITLAB_URL, p.path_with_namespace),
                            "namespace": {"id": namespace.id, "full_path": namespace.full_path, "kind": "group"},
                        });
                        if let Some(at) = p.last_activity_ms {
                            project["last_activity_at"] = json!(crate::time::rfc3339(at));
                        }
                        project
                    })
                    .collect();
                let mut answer = json_answer(200, serde_json::Value::Array(body));
                let pages = total.div_ceil(per_page).max(1);
                let link = |page: u64, rel: &str| {
                    format!("<{}>; rel=\"{rel}\"", page_url(&request.url, key, page))
                };
                let mut links = Vec::new();
                if page > 1 {
                    links.push(link(page - 1, "prev"));
                }
                if page < pages {
                    links.push(link(page + 1, "next"));
                }
                links.push(link(1, "first"));
                // GitLab leaves out the last page and the total for very large collections.
                if total <= 10_000 {
                    links.push(link(pages, "last"));
                    answer.headers.push(("x-total".into(), total.to_string()));
                    answer
                        .headers
                        .push(("x-total-pages".into(), pages.to_string()));
                }
                answer.headers.push(("link".into(), links.join(", ")));
                answer.headers.push(("x-page".into(), page.to_string()));
                answer
                    .headers
                    .push(("x-per-page".into(), per_page.to_string()));
                answer
            }
        };
        seen.status = answer.status;
        self.listings.push(seen);
        for (after, project) in self.delete_after_listings.clone() {
            if self.listings.len() == after {
                self.projects.retain(|p| p.id != project);
            }
        }
        answer
    }

    fn export(
        &mut self,
        request: &HttpRequest,
        key: &str,
        at_ms: u64,
        fault: Option<Fault>,
    ) -> HttpResponse {
        // The limiter counts every request of the user, refused or not, in a fixed window
        // that the first request opens.
        let window = self
            .windows
            .entry(self.token.clone())
            .or_insert(RateWindow {
                opened_ms: at_ms,
                count: 0,
            });
        if at_ms >= window.opened_ms + MINUTE {
            *window = RateWindow {
                opened_ms: at_ms,
                count: 0,
            };
        }
        window.count += 1;
        let over_limit = window.count > self.export_limit;
        let window_left_s = (window.opened_ms + MINUTE - at_ms).div_ceil(SECOND);

        let form: HashMap<String, String> =
            url::form_urlencoded::parse(request.body.as_deref().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let upload_url = form.get("upload[url]").and_then(|u| Url::parse(u).ok());
        let project = key
            .parse::<u64>()
            .ok()
            .filter(|id| self.projects.iter().any(|p| p.id == *id));
        let answer = if over_limit {
            too_many(self.retry_after_header.then_some(window_left_s))
        } else {
            match fault {
                Some(Fault::TooMany(seconds)) => too_many(seconds),
                Some(Fault::Status(status)) => error_answer(status),
                _ => match project {
                    None => error_answer(404),
                    Some(_)
                        if upload_url.is_none()
                            || form.get("upload[http_method]").map(String::as_str)
                                != Some("PUT") =>
                    {
                        json_answer(400, json!({"error": "upload[url] is missing"}))
                    }
                    Some(id) => match self.refusals.get(&id) {
                        Some(status) => error_answer(*status),
                        None => json_answer(202, json!({"message": "202 Accepted"})),
                    },
                },
            }
        };
        if answer.status == 202 {
            let id = project.unwrap();
            let build = self.build_rng.between(self.build_ms.0, self.build_ms.1);
            self.jobs.push(ExportJob {
                project_id: id,
                accepted_ms: at_ms,
                ready_ms: at_ms + build,
                upload_url: upload_url.clone().unwrap(),
                fails: self.build_failures.contains(&id),
                upload_lost: self.lost_uploads.contains(&id),
                delivered: false,
            });
        }
        self.exports.push(ExportSeen {
            sent_ms: at_ms, // corrected by `World::serve`
            at_ms,
            project_id: key.parse().unwrap_or(0),
            status: answer.status,
            answer_lost: false,
            limited_by_gitlab: over_limit,
            upload_url,
        });
        answer
    }

    /// `GET /projects/:id/export`: where the latest export of the project stands.
    fn export_status(&mut self, key: &str, at_ms: u64, fault: Option<Fault>) -> HttpResponse {
        let project = key
            .parse::<u64>()
            .ok()
            .filter(|id| self.projects.iter().any(|p| p.id == *id));
        let answer = match (fault, project) {
            (Some(Fault::TooMany(seconds)), _) => too_many(seconds),
            (Some(Fault::Status(status)), _) => error_answer(status),
            (_, None) => error_answer(404),
            (_, Some(id)) => {
                let latest = self.jobs.iter().rev().find(|j| j.project_id == id);
                let status = match latest {
                    None => "none",
                    Some(job) if at_ms < job.accepted_ms + SECOND => "queued",
                    Some(job) if at_ms < job.ready_ms => "started",
                    Some(job) if job.fails => "failed",
                    Some(_) if self.none_when_built => "none",
                    Some(_) => "finished",
                };
                json_answer(
                    200,
                    json!({"id": id, "name": format!("project-{id}"), "export_status": status}),
                )
            }
        };
        self.status_checks
            .push((at_ms, key.parse().unwrap_or(0), answer.status));
        answer
    }

    /// An export GitLab accepted before the simulation began (from a run a store was left in):
    /// built a second later, its archive then PUT to `upload_url`.
    pub(crate) fn accepted_before(&mut self, project_id: u64, accepted_ms: u64, upload_url: Url) {
        self.jobs.push(ExportJob {
            project_id,
            accepted_ms,
            ready_ms: accepted_ms + SECOND,
            upload_url,
            fails: false,
            upload_lost: false,
            delivered: false,
        });
    }

    /// Exports accepted (and answered as heard) per project.
    pub(crate) fn accepted_heard(&self) -> BTreeMap<u64, usize> {
        let mut counts = BTreeMap::new();
        for e in self
            .exports
            .iter()
            .filter(|e| e.status == 202 && !e.answer_lost)
        {
            *counts.entry(e.project_id).or_insert(0) += 1;
        }
        counts
    }

    pub(crate) fn accepted(&self) -> BTreeMap<u64, usize> {
        let mut counts = BTreeMap::new();
        for e in self.exports.iter().filter(|e| e.status == 202) {
            *counts.entry(e.project_id).or_insert(0) += 1;
        }
        counts
    }

    pub(crate) fn limited_by_itself(&self) -> usize {
        self.exports.iter().filter(|e| e.limited_by_gitlab).count()
    }
}

/// A listing page URL as GitLab builds it for `Link`: the request's parameters (plus `id`),
/// sorted, with `page` replaced.
fn page_url(request: &Url, group: &str, page: u64) -> Url {
    let mut pairs: Vec<(String, String)> = request
        .query_pairs()
        .into_owned()
        .filter(|(name, _)| name != "page" && name != "id")
        .collect();
    pairs.push(("id".into(), group.into()));
    pairs.push(("page".into(), page.to_string()));
    pairs.sort();
    let mut url = request.clone();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url
}
