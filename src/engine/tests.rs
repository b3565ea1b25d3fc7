//! The engine against a simulated GitLab and S3, on the host: unit tests and property tests.
//!
//! The simulated world:
//! - [`SimGitLab`] answers the engine's requests as GitLab's REST API does: offset pagination
//!   with `Link` headers and a server-side cap on `per_page`, subgroups, shared projects,
//!   archived projects, and the per-user export limit as a fixed one-minute window opened by
//!   the first request. It records every request with its (simulated) arrival time. It
//!   answers `GET /user`, and `GET /projects/:id/export` as the export it accepted goes
//!   `queued`, `started`, then `finished` (or `failed`) after a simulated build time, when it
//!   PUTs the archive to the presigned upload URL (unless the upload is to be lost).
//! - [`SimS3`] answers the bucket-region probe, the worker's header-signed PUTs (preflight
//!   probe, manifest parts, summary) and HEADs of backups from the objects it holds.
//! - [`World`] carries requests over a simulated network on a millisecond clock: each leg has
//!   a latency, so a request arrives after it was sent and is answered after it arrived; it
//!   also injects faults (429s, 5xx, lost requests and lost answers, timeouts).
//! - [`drive_tick`] runs one tick exactly like `worker::coordinator` does, counting
//!   subrequests, and may kill the worker at a step: before the request went out, while it is
//!   in flight (it still reaches GitLab, maybe after the next tick began), or after its answer
//!   was recorded.
//! - [`Harness`] fires ticks at cron cadence (every minute, with jitter, sometimes late) and at
//!   the alarm each tick asks for, as the Durable Object does in production: an event that
//!   comes while a tick is running is skipped, a crashed alarm is retried.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, UNIX_EPOCH};

use percent_encoding::percent_decode_str;
use proptest::prelude::*;
use serde_json::json;
use url::Url;

use super::{
    run_due, Begin, Event, Start, Tick, TickReport, BACKOFF_MAX, BACKOFF_STEP, CHECK_EVERY,
    EXPORT_WINDOW, FIRST_CHECK_AFTER, LEARNED_LIMIT_HOLDS, META_BLOCKED_UNTIL, META_LAST_ERROR,
    META_REGION, REQUEST_TIMEOUT, RETRY_AFTER_SLACK, RETRY_BACKOFF,
};
use crate::config::Config;
use crate::gitlab::GroupRef;
use crate::http::{HttpRequest, HttpResponse, HttpResult, Method};
use crate::s3::object_key;
use crate::store::host::HostSql;
use crate::store::{Phase, RunRow, Store};
use crate::time::ms;

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
/// 2024-01-01T00:00:00Z: simulated time starts on a real date, at midnight UTC.
const T0: u64 = 1_704_067_200_000;
const GITLAB_URL: &str = "https://gitlab.example.com/";
const TOKEN: &str = "glpat-simulated";
const BUCKET: &str = "backups";
/// What the simulated GitLab says when it refuses an export with 400.
const REFUSAL_400: &str = "Project export is not allowed for this project";

// ---------------------------------------------------------------------------------------------
// Randomness for the simulation (latencies, jitter, faults), seeded by the property tests.

#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// SplitMix64.
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    fn upto(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(n) => self.next() % n,
            None => self.next(),
        }
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.upto(hi - lo)
    }

    fn percent(&mut self, chance: u32) -> bool {
        self.next() % 100 < u64::from(chance)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.upto(items.len() as u64 - 1) as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// Faults.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// GitLab answers 429 (someone else spent the quota), with `Retry-After` seconds or none.
    TooMany(Option<u64>),
    /// GitLab answers this status (5xx, or a one-off 403/404/400).
    Status(u16),
    /// The connection fails before the request reaches GitLab.
    LostRequest,
    /// GitLab handles the request, but its answer never comes back.
    LostAnswer,
}

/// Faults for one kind of request: a script first (one entry per request, `None` for no
/// fault), then an optional random source.
#[derive(Default)]
struct FaultPlan {
    script: VecDeque<Option<Fault>>,
    random: Option<Box<dyn FnMut() -> Option<Fault>>>,
}

impl FaultPlan {
    fn scripted(script: &[Option<Fault>]) -> FaultPlan {
        FaultPlan {
            script: script.iter().copied().collect(),
            random: None,
        }
    }

    fn next(&mut self) -> Option<Fault> {
        if let Some(fault) = self.script.pop_front() {
            return fault;
        }
        self.random.as_mut().and_then(|random| random())
    }
}

// ---------------------------------------------------------------------------------------------
// The simulated GitLab.

struct SimGroup {
    id: u64,
    full_path: String,
    parent: Option<usize>,
}

struct SimProject {
    id: u64,
    path_with_namespace: String,
    group: usize,
    shared_with: Vec<usize>,
    archived: bool,
}

/// An export request as GitLab saw it.
#[derive(Clone, Debug)]
struct ExportSeen {
    /// When the worker sent it.
    sent_ms: u64,
    /// When it reached GitLab.
    at_ms: u64,
    project_id: u64,
    status: u16,
    /// The worker never got the answer (lost on the way back, timed out, or the worker died).
    answer_lost: bool,
    /// Whether the 429 came from GitLab's own limit (not an injected fault).
    limited_by_gitlab: bool,
    upload_url: Option<Url>,
}

/// A listing request as GitLab saw it.
#[derive(Clone, Debug)]
struct ListingSeen {
    at_ms: u64,
    /// The group as the request named it (id or decoded full path).
    group: String,
    page: u64,
    status: u16,
    query: HashMap<String, String>,
}

struct RateWindow {
    opened_ms: u64,
    count: u32,
}

struct SimGitLab {
    base: Url,
    token: String,
    groups: Vec<SimGroup>,
    projects: Vec<SimProject>,
    next_id: u64,
    /// The server's largest page, whatever `per_page` asks (GitLab's is 100).
    page_cap: u64,
    /// Export requests per user and window.
    export_limit: u32,
    /// Whether GitLab's own 429s carry `Retry-After` (until its window ends).
    retry_after_header: bool,
    windows: HashMap<String, RateWindow>,
    /// Projects whose exports GitLab always refuses, with the status.
    refusals: HashMap<u64, u16>,
    export_faults: FaultPlan,
    listing_faults: FaultPlan,
    exports: Vec<ExportSeen>,
    listings: Vec<ListingSeen>,
    /// After this many listing requests, this project is deleted (a change during a listing).
    delete_after_listings: Option<(usize, u64)>,
    /// Faults of the other GitLab requests (`GET /user`, `GET /projects/:id/export`).
    status_faults: FaultPlan,
    /// How long GitLab takes to build an export and upload it, in ms (inclusive range).
    build_ms: (u64, u64),
    build_rng: Rng,
    /// Projects whose exports GitLab can never build (status `failed`).
    build_failures: BTreeSet<u64>,
    /// Projects whose uploads never reach the bucket although GitLab reports `finished`.
    lost_uploads: BTreeSet<u64>,
    /// Exports GitLab accepted, in the order it accepted them.
    jobs: Vec<ExportJob>,
    /// `GET /projects/:id/export` as GitLab saw them: (arrival, project, status answered).
    status_checks: Vec<(u64, u64, u16)>,
    /// `GET /user` arrivals.
    user_checks: Vec<u64>,
}

/// An export GitLab accepted: it builds the archive and PUTs it to the upload URL.
#[derive(Clone, Debug)]
struct ExportJob {
    project_id: u64,
    accepted_ms: u64,
    /// When the build ends (and the upload, if any, is in the bucket).
    ready_ms: u64,
    upload_url: Url,
    fails: bool,
    upload_lost: bool,
    delivered: bool,
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

fn is_export(request: &HttpRequest) -> bool {
    request.method == Method::Post && request.url.path().ends_with("/export")
}

impl SimGitLab {
    fn new(export_limit: u32) -> SimGitLab {
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
            delete_after_listings: None,
            status_faults: FaultPlan::default(),
            build_ms: (2 * SECOND, 8 * SECOND),
            build_rng: Rng::new(0xB1D),
            build_failures: BTreeSet::new(),
            lost_uploads: BTreeSet::new(),
            jobs: Vec::new(),
            status_checks: Vec::new(),
            user_checks: Vec::new(),
        }
    }

    fn add_group(&mut self, path: &str, parent: Option<usize>) -> usize {
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

    fn add_projects(&mut self, group: usize, count: usize) -> Vec<u64> {
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
                });
                id
            })
            .collect()
    }

    fn project_mut(&mut self, id: u64) -> &mut SimProject {
        self.projects.iter_mut().find(|p| p.id == id).unwrap()
    }

    fn path_of(&self, id: u64) -> &str {
        &self
            .projects
            .iter()
            .find(|p| p.id == id)
            .unwrap()
            .path_with_namespace
    }

    fn share(&mut self, project: u64, group: usize) {
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
    fn own_projects(
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

    fn serve(&mut self, request: &HttpRequest, at_ms: u64, fault: Option<Fault>) -> HttpResponse {
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
                        json!({
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
                        })
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
        if let Some((after, project)) = self.delete_after_listings {
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

    /// Exports accepted (and answered as heard) per project.
    fn accepted_heard(&self) -> BTreeMap<u64, usize> {
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

    fn accepted(&self) -> BTreeMap<u64, usize> {
        let mut counts = BTreeMap::new();
        for e in self.exports.iter().filter(|e| e.status == 202) {
            *counts.entry(e.project_id).or_insert(0) += 1;
        }
        counts
    }

    fn limited_by_itself(&self) -> usize {
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

// ---------------------------------------------------------------------------------------------
// The simulated S3: the region probe, the worker's own header-signed PUTs (preflight probe,
// manifest parts, summary) and HEADs of backups; GitLab's uploads land in it directly.

#[derive(Default)]
struct SimS3 {
    /// The region S3 names in `x-amz-bucket-region`; `None`: a server that does not say.
    region: Option<String>,
    probes: Vec<(u64, Url)>,
    /// Objects by host and path: their size.
    objects: BTreeMap<(String, String), u64>,
    /// The worker's PUTs: (arrival, path, body).
    puts: Vec<(u64, String, String)>,
    /// The worker's HEADs: (arrival, path, status answered).
    heads: Vec<(u64, String, u16)>,
    /// GitLab's uploads: (arrival, path, size).
    uploads: Vec<(u64, String, u64)>,
    /// A status S3 answers the worker's PUTs with instead of 200.
    put_status: Option<u16>,
}

fn object_id(url: &Url) -> (String, String) {
    (
        url.host_str().unwrap_or_default().to_owned(),
        url.path().to_owned(),
    )
}

impl SimS3 {
    /// The request is signed in its headers for the region of the bucket's host.
    fn assert_header_signed(request: &HttpRequest) {
        let authorization = request
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("an unsigned S3 request: {request:?}"));
        let host = request.url.host_str().unwrap();
        let region = host
            .strip_prefix("backups.s3.")
            .and_then(|h| h.strip_suffix(".amazonaws.com"))
            .unwrap();
        assert!(
            authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDSIMULATED/")
                && authorization.contains(&format!("/{region}/s3/aws4_request")),
            "{authorization}"
        );
    }

    fn upload(&mut self, url: &Url, size: u64, at_ms: u64) {
        assert!(url.query_pairs().any(|(n, _)| n == "X-Amz-Signature"));
        let id = object_id(url);
        self.uploads.push((at_ms, id.1.clone(), size));
        self.objects.insert(id, size);
    }

    fn serve(&mut self, request: &HttpRequest, at_ms: u64) -> HttpResponse {
        let presigned = request
            .url
            .query_pairs()
            .any(|(n, _)| n == "X-Amz-Signature");
        if request.method == Method::Put {
            Self::assert_header_signed(request);
            let status = self.put_status.unwrap_or(200);
            if status == 200 {
                let body = request.body.clone().unwrap_or_default();
                self.objects
                    .insert(object_id(&request.url), body.len() as u64);
                self.puts.push((at_ms, request.url.path().to_owned(), body));
                return HttpResponse {
                    status,
                    headers: Vec::new(),
                    body: Vec::new(),
                };
            }
            return HttpResponse {
                status,
                headers: vec![("content-type".into(), "application/xml".into())],
                body: b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
                    .to_vec(),
            };
        }
        assert_eq!(request.method, Method::Head, "{request:?}");
        if !presigned {
            Self::assert_header_signed(request);
            let size = self.objects.get(&object_id(&request.url)).copied();
            let status = if size.is_some() { 200 } else { 404 };
            self.heads
                .push((at_ms, request.url.path().to_owned(), status));
            return HttpResponse {
                status,
                headers: size
                    .map(|n| vec![("content-length".into(), n.to_string())])
                    .unwrap_or_default(),
                body: Vec::new(),
            };
        }
        self.probes.push((at_ms, request.url.clone()));
        match &self.region {
            Some(region) => HttpResponse {
                status: if region == "us-east-1" { 200 } else { 301 },
                headers: vec![("x-amz-bucket-region".into(), region.clone())],
                body: Vec::new(),
            },
            None => HttpResponse {
                status: 403,
                headers: Vec::new(),
                body: Vec::new(),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The network and the clock.

/// A request as the worker sent it.
#[derive(Clone, Debug)]
struct Sent {
    sent_ms: u64,
    done_ms: u64,
    to_gitlab: bool,
    export: bool,
    /// The status the worker got, or why it got none.
    answer: Result<u16, String>,
    /// `Retry-After` of the answer, in seconds.
    retry_after_s: Option<u64>,
    /// Whether the worker lived to see the answer (or the failure).
    heard: bool,
}

/// A request on its way to its server, sent by a worker that died before the answer.
struct Delivery {
    sent_ms: u64,
    arrival_ms: u64,
    request: HttpRequest,
    fault: Option<Fault>,
}

struct World {
    now: u64,
    gitlab: SimGitLab,
    s3: SimS3,
    rng: Rng,
    /// Latency of one leg (to the server, or back), in ms, inclusive range.
    leg_ms: (u64, u64),
    /// Chance (percent) that a leg takes up to 40 s, past the worker's request timeout.
    slow_percent: u32,
    /// Latencies of the next legs, before any drawn at random.
    scripted_legs: VecDeque<u64>,
    sent: Vec<Sent>,
    /// Requests of dead workers still on their way, by arrival time.
    in_flight: Vec<Delivery>,
}

impl World {
    fn new(gitlab: SimGitLab) -> World {
        World {
            now: T0,
            gitlab,
            s3: SimS3::default(),
            rng: Rng::new(1),
            leg_ms: (100, 100),
            slow_percent: 0,
            scripted_legs: VecDeque::new(),
            sent: Vec::new(),
            in_flight: Vec::new(),
        }
    }

    fn leg(&mut self) -> u64 {
        if let Some(leg) = self.scripted_legs.pop_front() {
            leg
        } else if self.rng.percent(self.slow_percent) {
            self.rng.upto(40 * SECOND)
        } else {
            self.rng.between(self.leg_ms.0, self.leg_ms.1)
        }
    }

    fn to_gitlab(&self, request: &HttpRequest) -> bool {
        request.url.origin() == self.gitlab.base.origin()
    }

    fn fault_for(&mut self, request: &HttpRequest) -> Option<Fault> {
        if !self.to_gitlab(request) {
            None
        } else if is_export(request) {
            self.gitlab.export_faults.next()
        } else if request.url.path().contains("/groups/") {
            self.gitlab.listing_faults.next()
        } else {
            self.gitlab.status_faults.next()
        }
    }

    /// The server handles the request at `at_ms`; returns its answer and, for an export, the
    /// index of GitLab's record of it.
    fn serve(
        &mut self,
        request: &HttpRequest,
        sent_ms: u64,
        at_ms: u64,
        fault: Option<Fault>,
    ) -> (HttpResponse, Option<usize>) {
        self.deliver_uploads(at_ms);
        if self.to_gitlab(request) {
            let before = self.gitlab.exports.len();
            let answer = self.gitlab.serve(request, at_ms, fault);
            let seen = (self.gitlab.exports.len() > before).then_some(before);
            if let Some(index) = seen {
                self.gitlab.exports[index].sent_ms = sent_ms;
            }
            (answer, seen)
        } else if request
            .url
            .host_str()
            .is_some_and(|h| h.ends_with(".amazonaws.com"))
        {
            (self.s3.serve(request, at_ms), None)
        } else {
            panic!("the engine sent a request to an unknown host: {request:?}");
        }
    }

    /// GitLab's builds that ended by `until_ms` upload their archives (unless the upload is
    /// lost on the way).
    fn deliver_uploads(&mut self, until_ms: u64) {
        for job in self.gitlab.jobs.iter_mut() {
            if job.delivered || job.ready_ms > until_ms {
                continue;
            }
            job.delivered = true;
            if !job.fails && !job.upload_lost {
                let size = 10_000 + job.project_id;
                self.s3.upload(&job.upload_url, size, job.ready_ms);
            }
        }
    }

    /// Servers handle the requests of dead workers that arrive by `until_ms`, in order.
    fn arrive_until(&mut self, until_ms: u64) {
        self.in_flight.sort_by_key(|d| d.arrival_ms);
        while self
            .in_flight
            .first()
            .is_some_and(|d| d.arrival_ms <= until_ms)
        {
            let delivery = self.in_flight.remove(0);
            let (_, export) = self.serve(
                &delivery.request,
                delivery.sent_ms,
                delivery.arrival_ms,
                delivery.fault,
            );
            self.lose_answer(export);
        }
    }

    fn lose_answer(&mut self, export: Option<usize>) {
        if let Some(index) = export {
            self.gitlab.exports[index].answer_lost = true;
        }
    }

    /// Sends a request as the glue does (`send(&request, REQUEST_TIMEOUT)`): the clock moves to
    /// when the answer (or the failure) comes back.
    fn send(&mut self, request: &HttpRequest) -> HttpResult {
        let sent_ms = self.now;
        let timeout = ms(REQUEST_TIMEOUT);
        let (up, down) = (self.leg(), self.leg());
        let fault = self.fault_for(request);
        let (result, done_ms) = if fault == Some(Fault::LostRequest) {
            (
                Err("connection reset before the request was sent".to_owned()),
                sent_ms + up.min(timeout),
            )
        } else if up >= timeout {
            (Err("timed out".to_owned()), sent_ms + timeout)
        } else {
            let arrival = sent_ms + up;
            self.arrive_until(arrival);
            let (answer, export) = self.serve(request, sent_ms, arrival, fault);
            let answered = arrival + down;
            if fault == Some(Fault::LostAnswer) {
                self.lose_answer(export);
                (
                    Err("connection reset".to_owned()),
                    answered.min(sent_ms + timeout),
                )
            } else if answered > sent_ms + timeout {
                self.lose_answer(export);
                (Err("timed out".to_owned()), sent_ms + timeout)
            } else {
                (Ok(answer), answered)
            }
        };
        self.now = done_ms;
        self.sent.push(Sent {
            sent_ms,
            done_ms,
            to_gitlab: self.to_gitlab(request),
            export: is_export(request),
            answer: result.as_ref().map(|a| a.status).map_err(Clone::clone),
            retry_after_s: result
                .as_ref()
                .ok()
                .and_then(|a| a.header("retry-after"))
                .and_then(|v| v.parse().ok()),
            heard: true,
        });
        result
    }

    /// The request goes out and the worker dies before the answer, maybe before the request
    /// reaches its server (which then handles it all the same, even while a new tick runs).
    fn send_then_die(&mut self, request: &HttpRequest) {
        let sent_ms = self.now;
        let up = self.leg();
        let fault = self.fault_for(request);
        if fault != Some(Fault::LostRequest) && up < ms(REQUEST_TIMEOUT) {
            self.in_flight.push(Delivery {
                sent_ms,
                arrival_ms: sent_ms + up,
                request: request.clone(),
                fault,
            });
        }
        self.now = sent_ms + self.rng.upto(up.min(ms(REQUEST_TIMEOUT)));
        self.sent.push(Sent {
            sent_ms,
            done_ms: self.now,
            to_gitlab: self.to_gitlab(request),
            export: is_export(request),
            answer: Err("the worker died".into()),
            retry_after_s: None,
            heard: false,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// One tick, as the coordinator runs it.

/// Where the worker dies during a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Crash {
    /// `next_step` returned the step (and persisted it), the request never went out.
    BeforeSend,
    /// The request went out (it reaches its server, maybe after the worker is gone); the
    /// worker died before the answer.
    InFlight,
    /// The answer was handled; the worker died before `finish` (no report, no alarm).
    AfterHandle,
}

#[derive(Debug, PartialEq, Eq)]
enum Began {
    Idle,
    AlreadyRunning(u64),
    Ran,
}

#[derive(Debug)]
struct TickLog {
    started_ms: u64,
    began: Began,
    /// Steps the tick asked for (each one a subrequest).
    subrequests: u32,
    exports: u32,
    report: Option<TickReport>,
    crashed: Option<Crash>,
}

impl TickLog {
    fn events(&self) -> &[Event] {
        self.report.as_ref().map_or(&[], |r| &r.events)
    }
}

type CrashPlan = dyn FnMut(&HttpRequest) -> Option<Crash>;

/// Runs one tick like `worker::coordinator`: `next_steps`, send them together, `handle` each
/// answer in step order, until no step comes; then `finish`.
fn drive_tick(
    db: &HostSql,
    config: &Config,
    world: &mut World,
    start: Start,
    crash: &mut CrashPlan,
) -> TickLog {
    let store = Store::open(db).expect("the store opens");
    let mut log = TickLog {
        started_ms: world.now,
        began: Began::Ran,
        subrequests: 0,
        exports: 0,
        report: None,
        crashed: None,
    };
    let mut tick = match Tick::begin(&store, config, world.now, start).expect("begin") {
        Begin::Tick(tick) => tick,
        Begin::Idle => {
            log.began = Began::Idle;
            return log;
        }
        Begin::AlreadyRunning(id) => {
            log.began = Began::AlreadyRunning(id);
            return log;
        }
    };
    loop {
        let steps = tick.next_steps(world.now).expect("next_steps");
        if steps.is_empty() {
            break;
        }
        // The steps of one call go out together; their answers are handled in step order.
        let mut answered = Vec::new();
        for step in steps {
            log.subrequests += 1;
            if is_export(&step.request) {
                log.exports += 1;
            }
            let crash = crash(&step.request);
            match crash {
                Some(Crash::BeforeSend) => {
                    log.crashed = crash;
                    return log;
                }
                Some(Crash::InFlight) => {
                    world.send_then_die(&step.request);
                    log.crashed = crash;
                    return log;
                }
                _ => {}
            }
            let answer = world.send(&step.request);
            answered.push((step, answer, crash));
        }
        for (step, answer, crash) in answered {
            tick.handle(step, answer, world.now).expect("handle");
            if crash == Some(Crash::AfterHandle) {
                log.crashed = crash;
                return log;
            }
        }
    }
    log.report = Some(tick.finish(world.now));
    log
}

// ---------------------------------------------------------------------------------------------
// The Durable Object's life: cron ticks, the alarm, restarts.

struct Harness {
    db: HostSql,
    config: Config,
    world: World,
    ticks: Vec<TickLog>,
    alarm: Option<u64>,
    cron_base: u64,
    cron_at: u64,
    /// Each cron tick fires within ± this of its minute.
    cron_jitter_ms: u64,
    /// Chance (percent) that an event comes late by up to this many ms (the worker was away).
    late: (u32, u64),
    crash: Box<CrashPlan>,
    rng: Rng,
}

impl Harness {
    fn new(config: Config, world: World) -> Harness {
        let now = world.now;
        let db = HostSql::in_memory();
        // The engine runs more distinct statements than rusqlite caches by default (16).
        db.0.set_prepared_statement_cache_capacity(128);
        Store::open(&db).expect("the schema is created");
        Harness {
            db,
            config,
            world,
            ticks: Vec::new(),
            alarm: None,
            cron_base: now,
            cron_at: now,
            cron_jitter_ms: 0,
            late: (0, 0),
            crash: Box::new(|_| None),
            rng: Rng::new(7),
        }
    }

    fn store(&self) -> Store<&HostSql> {
        Store::open(&self.db).expect("the store opens")
    }

    fn latest_run(&self) -> Option<RunRow> {
        self.store().latest_run().unwrap()
    }

    /// Whether the latest run has finished (straight from the table: checked after every tick).
    fn finished(&self) -> bool {
        self.db
            .0
            .prepare_cached("SELECT phase = 'finished' FROM runs ORDER BY id DESC LIMIT 1")
            .unwrap()
            .query_row([], |row| row.get::<_, bool>(0))
            .unwrap_or(false)
    }

    fn attempts(&self, run: u64, project: u64) -> u64 {
        self.db
            .0
            .query_row(
                "SELECT attempts FROM projects WHERE run_id = ?1 AND project_id = ?2",
                [run as i64, project as i64],
                |row| row.get::<_, i64>(0),
            )
            .unwrap() as u64
    }

    fn states(&self, run: u64) -> BTreeMap<u64, String> {
        let mut statement = self
            .db
            .0
            .prepare("SELECT project_id, state FROM projects WHERE run_id = ?1")
            .unwrap();
        statement
            .query_map([run as i64], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get::<_, String>(1)?))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Runs a tick now (a manual call, or one the test times itself).
    fn tick(&mut self, start: Start) -> &TickLog {
        self.run_tick(start, false)
    }

    fn run_tick(&mut self, start: Start, from_alarm: bool) -> &TickLog {
        let log = drive_tick(
            &self.db,
            &self.config,
            &mut self.world,
            start,
            &mut *self.crash,
        );
        if let Some(at) = log.report.as_ref().and_then(|r| r.wake_at_ms) {
            // `set_alarm` replaces the alarm; one in the past fires at once.
            self.alarm = Some(at.max(self.world.now));
        }
        if log.crashed.is_some() && from_alarm && self.alarm.is_none() {
            // A failed alarm handler is retried, 2 s later at first.
            self.alarm = Some(self.world.now + 2 * SECOND);
        }
        self.ticks.push(log);
        self.ticks.last().unwrap()
    }

    fn schedule_next_cron(&mut self) {
        self.cron_base += MINUTE;
        let jitter = self.rng.upto(2 * self.cron_jitter_ms);
        self.cron_at = (self.cron_base + jitter).saturating_sub(self.cron_jitter_ms);
    }

    /// Fires the next cron tick or alarm, whichever comes first.
    fn fire_next(&mut self) {
        let (at, from_alarm) = match self.alarm {
            Some(alarm) if alarm <= self.cron_at => (alarm, true),
            _ => (self.cron_at, false),
        };
        if from_alarm {
            self.alarm = None;
        } else {
            self.schedule_next_cron();
        }
        if at < self.world.now {
            // It came while a tick was running: the coordinator skipped it.
            return;
        }
        let mut at = at;
        if self.late.0 > 0 && self.rng.percent(self.late.0) {
            at += self.rng.upto(self.late.1);
        }
        self.world.now = at;
        self.run_tick(Start::IfDue, from_alarm);
    }

    fn run_until(&mut self, deadline_ms: u64, done: impl Fn(&Harness) -> bool) {
        while !done(self) {
            assert!(
                self.world.now <= deadline_ms,
                "not done by the deadline: {}",
                self.describe()
            );
            self.fire_next();
        }
    }

    fn run_until_finished(&mut self, deadline_ms: u64) -> RunRow {
        self.run_until(deadline_ms, Harness::finished);
        // Requests of dead workers still arrive.
        self.world.arrive_until(u64::MAX);
        self.latest_run().unwrap()
    }

    fn describe(&self) -> String {
        let run = self.latest_run();
        let states = run.as_ref().map(|r| {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for state in self.states(r.id).into_values() {
                *counts.entry(state).or_insert(0) += 1;
            }
            counts
        });
        format!(
            "at +{} s after {} ticks; run {run:?}; states {states:?}; last tick {:?}; last error {:?}",
            (self.world.now - T0) / SECOND,
            self.ticks.len(),
            self.ticks.last(),
            self.store().meta(&[META_LAST_ERROR]).ok().and_then(|m| m.text(META_LAST_ERROR).ok().flatten()),
        )
    }

    /// GitLab requests the worker sent after the `index`-th request.
    fn gitlab_sends_after(&self, index: usize) -> impl Iterator<Item = &Sent> {
        self.world.sent[index + 1..].iter().filter(|s| s.to_gitlab)
    }
}

fn config(overrides: &[(&str, &str)]) -> Config {
    let mut vars: HashMap<String, String> = [
        ("GITLAB_URL", GITLAB_URL),
        ("GITLAB_TOKEN", TOKEN),
        ("GROUPS_TO_BACKUP", "acme"),
        ("AWS_S3_BUCKET", BUCKET),
        ("AWS_ACCESS_KEY_ID", "AKIDSIMULATED"),
        ("AWS_SECRET_ACCESS_KEY", "simulated-secret"),
        ("AWS_REGION", "eu-west-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (name, value) in overrides {
        vars.insert((*name).to_owned(), (*value).to_owned());
    }
    Config::from_lookup(|name| vars.get(name).cloned()).expect("a valid test configuration")
}

/// A GitLab with one group `acme` holding `count` projects.
fn one_group(count: usize, export_limit: u32) -> (SimGitLab, Vec<u64>) {
    let mut gitlab = SimGitLab::new(export_limit);
    let acme = gitlab.add_group("acme", None);
    let ids = gitlab.add_projects(acme, count);
    (gitlab, ids)
}

// ---------------------------------------------------------------------------------------------
// Checks shared by the tests.

/// No 60 s window at GitLab, by arrival time, holds more than `limit` export requests.
fn assert_gitlab_window_respected(exports: &[ExportSeen], limit: u32) {
    let mut times: Vec<u64> = exports.iter().map(|e| e.at_ms).collect();
    times.sort_unstable();
    let mut end = 0;
    for (start, at) in times.iter().enumerate() {
        while end < times.len() && times[end] < at + ms(EXPORT_WINDOW) {
            end += 1;
        }
        assert!(
            end - start <= limit as usize,
            "{} export requests reached GitLab within 60 s from +{} ms (limit {limit}): {:?}",
            end - start,
            at - T0,
            &times[start..end].iter().map(|t| t - T0).collect::<Vec<_>>()
        );
    }
}

/// A project is asked for again only when the worker never heard GitLab's answer to the
/// previous request for it: never after an acceptance or refusal it heard.
fn assert_no_export_after_a_heard_outcome(exports: &[ExportSeen]) {
    assert_no_export_after_a_heard_outcome_but_retries(exports, &BTreeMap::new());
}

/// As [`assert_no_export_after_a_heard_outcome`], except for the projects in `retried`, whose
/// attempts fail after GitLab accepted them (the build fails, or the upload is lost): those are
/// asked for again, but only after the failure could be known (at least the given time after
/// the acceptance) and `RETRY_BACKOFF` more, and GitLab accepts them at most `MAX_ATTEMPTS`
/// times as heard.
fn assert_no_export_after_a_heard_outcome_but_retries(
    exports: &[ExportSeen],
    retried: &BTreeMap<u64, (u64, u64)>,
) {
    let mut by_sending: Vec<&ExportSeen> = exports.iter().collect();
    by_sending.sort_by_key(|e| e.sent_ms);
    for (project, (known_after, max_attempts)) in retried {
        let mut attempts: usize = 0;
        let mut not_before = 0;
        for e in by_sending.iter().filter(|e| e.project_id == *project) {
            assert!(
                e.sent_ms >= not_before,
                "project {project} asked again {} ms too early",
                not_before - e.sent_ms
            );
            if e.status == 202 && !e.answer_lost {
                attempts += 1;
                let backoff = RETRY_BACKOFF[(attempts - 1).min(RETRY_BACKOFF.len() - 1)];
                not_before = e.at_ms + known_after + ms(backoff);
            }
        }
        assert!(
            attempts as u64 <= *max_attempts,
            "project {project} accepted {attempts} times"
        );
    }
    let by_sending: Vec<&ExportSeen> = by_sending
        .into_iter()
        .filter(|e| !retried.contains_key(&e.project_id))
        .collect();
    let exports: Vec<&ExportSeen> = exports
        .iter()
        .filter(|e| !retried.contains_key(&e.project_id))
        .collect();
    let mut settled = BTreeSet::new();
    for e in by_sending {
        assert!(
            !settled.contains(&e.project_id),
            "project {} was asked for again at +{} ms after its outcome was heard: {:?}",
            e.project_id,
            e.sent_ms - T0,
            exports
                .iter()
                .filter(|x| x.project_id == e.project_id)
                .map(|x| (x.sent_ms - T0, x.at_ms - T0, x.status, x.answer_lost))
                .collect::<Vec<_>>()
        );
        if !e.answer_lost && matches!(e.status, 202 | 400 | 403 | 404) {
            settled.insert(e.project_id);
        }
    }
    for (project, accepted) in exports.iter().filter(|e| e.status == 202).fold(
        BTreeMap::<u64, usize>::new(),
        |mut m, e| {
            *m.entry(e.project_id).or_default() += 1;
            m
        },
    ) {
        let unheard = exports
            .iter()
            .filter(|e| e.project_id == project && e.status == 202 && e.answer_lost)
            .count();
        assert!(
            accepted <= 1 + unheard,
            "project {project} exported {accepted} times, only {unheard} unheard acceptances"
        );
    }
}

/// The run ended as a run with proof of landing does: the preflight probe written before any
/// export; each verified project's archive uploaded by GitLab to its key and seen there by a
/// signed HEAD; every project with a final outcome in exactly one manifest part; the summary
/// written last.
fn assert_landed_and_proven(h: &Harness, run: &RunRow) {
    let s3 = &h.world.s3;
    assert_eq!(run.phase, Phase::Finished);
    assert_eq!(run.error, None);
    let started = UNIX_EPOCH + Duration::from_millis(run.started_ms);
    let prefix = &h.config.s3_prefix;
    let probe = format!("/{}", crate::manifest::probe_key(prefix, started));
    let first_put = s3.puts.first().expect("the preflight PUT");
    assert_eq!(first_put.1, probe);
    assert!(h.world.gitlab.exports.iter().all(|e| e.at_ms > first_put.0));
    let summary = run.summary_key.as_deref().expect("the summary is written");
    let summary = format!("/{summary}");
    // What the bucket holds in the end: the last PUT of each key.
    let objects: BTreeMap<&str, &str> = s3
        .puts
        .iter()
        .map(|(_, path, body)| (path.as_str(), body.as_str()))
        .collect();
    let summary_body: serde_json::Value = serde_json::from_str(objects[summary.as_str()]).unwrap();
    assert!(summary_body.is_object(), "{summary_body}");
    let states = h.states(run.id);
    let mut listed = BTreeMap::new();
    for (path, body) in &objects {
        if !path.contains("/part-") {
            continue;
        }
        for line in body.lines() {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = entry["id"].as_u64().unwrap();
            assert!(
                listed.insert(id, entry).is_none(),
                "project {id} in two manifest lines"
            );
        }
    }
    let outcomes: BTreeSet<u64> = states
        .iter()
        .filter(|(_, s)| *s == "verified" || *s == "failed")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(listed.keys().copied().collect::<BTreeSet<_>>(), outcomes);
    assert_eq!(outcomes.len() as u64, run.verified + run.failed);
    for (id, state) in &states {
        assert!(
            state == "verified" || state == "failed",
            "project {id} ended {state}"
        );
        if state != "verified" {
            continue;
        }
        let key = format!(
            "/{}",
            object_key(prefix, h.world.gitlab.path_of(*id), started)
        );
        let uploaded = s3
            .uploads
            .iter()
            .filter(|u| u.1 == key)
            .map(|u| u.0)
            .min()
            .unwrap_or_else(|| panic!("{id} verified but never uploaded"));
        assert!(
            s3.heads
                .iter()
                .any(|(at, path, status)| *path == key && *status == 200 && *at >= uploaded),
            "{id} verified without a HEAD that found it"
        );
        assert_eq!(listed[id]["size"].as_u64(), Some(10_000 + id));
    }
}

fn assert_ticks_within_budget(ticks: &[TickLog], budget: u32, per_minute: u32) {
    for t in ticks {
        assert!(
            t.subrequests <= budget,
            "a tick at +{} ms used {} subrequests (budget {budget})",
            t.started_ms - T0,
            t.subrequests
        );
        assert!(
            t.exports <= per_minute,
            "a tick at +{} ms requested {} exports (EXPORTS_PER_MINUTE {per_minute})",
            t.started_ms - T0,
            t.exports
        );
        if let Some(report) = &t.report {
            assert_eq!(report.subrequests, t.subrequests);
            assert_eq!(report.exports, t.exports);
        }
    }
}

// =============================================================================================
// Unit-style tests.

#[test]
fn a_run_lists_every_page_of_every_group_then_exports_each_own_project_exactly_once() {
    let mut gitlab = SimGitLab::new(6);
    gitlab.page_cap = 2; // the server caps pages far below the 100 asked for
    let acme = gitlab.add_group("acme", None);
    let sub = gitlab.add_group("sub", Some(acme));
    let deep = gitlab.add_group("deep", Some(sub)); // not configured: reached as a subgroup
    let beta = gitlab.add_group("beta", None);
    let outside = gitlab.add_group("outside", None); // not configured
    let acme_own = gitlab.add_projects(acme, 4);
    let sub_own = gitlab.add_projects(sub, 3);
    let deep_own = gitlab.add_projects(deep, 2);
    let beta_own = gitlab.add_projects(beta, 5);
    let foreign = gitlab.add_projects(outside, 2);
    for p in &foreign {
        gitlab.share(*p, acme);
        gitlab.share(*p, beta);
    }
    gitlab.share(acme_own[0], beta);
    gitlab.project_mut(beta_own[4]).archived = true; // archived projects are backed up too
    let beta_id = gitlab.groups[beta].id.to_string();
    let groups = format!("acme,acme/sub,{beta_id}");
    let mut h = Harness::new(config(&[("GROUPS_TO_BACKUP", &groups)]), World::new(gitlab));

    let run = h.run_until_finished(T0 + HOUR);

    let expected: BTreeSet<u64> = [&acme_own, &sub_own, &deep_own, &beta_own]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    assert_eq!(expected.len(), 14);
    let gitlab = &h.world.gitlab;
    assert_eq!(gitlab.own_projects(&h.config.groups, true, true), expected);
    let pages = |group: &str| -> Vec<u64> {
        gitlab
            .listings
            .iter()
            .filter(|l| l.group == group && l.status == 200)
            .map(|l| l.page)
            .collect()
    };
    assert_eq!(
        pages("acme"),
        vec![1, 2, 3, 4, 5],
        "9 own projects, 2 a page"
    );
    assert_eq!(pages("acme/sub"), vec![1, 2, 3], "5 own projects, 2 a page");
    assert_eq!(pages(&beta_id), vec![1, 2, 3], "5 own projects, 2 a page");
    assert_eq!(gitlab.listings.len(), 11, "no page listed twice");
    for listing in &gitlab.listings {
        assert_eq!(
            listing.query.get("with_shared").map(String::as_str),
            Some("false")
        );
        assert_eq!(
            listing.query.get("include_subgroups").map(String::as_str),
            Some("true")
        );
    }
    // All listing happens before any export.
    let last_listing = gitlab.listings.iter().map(|l| l.at_ms).max().unwrap();
    assert!(gitlab.exports.iter().all(|e| e.at_ms > last_listing));

    let accepted = gitlab.accepted();
    assert_eq!(accepted.keys().copied().collect::<BTreeSet<_>>(), expected);
    assert!(accepted.values().all(|n| *n == 1), "{accepted:?}");
    assert_eq!(gitlab.exports.len(), 14);
    for p in &foreign {
        assert!(!accepted.contains_key(p), "shared project {p} was exported");
    }
    assert_eq!(
        (run.listed, run.exported, run.verified, run.failed),
        (14, 14, 14, 0)
    );
    assert!(h.states(run.id).values().all(|s| s == "verified"));
    assert_landed_and_proven(&h, &run);

    // Each upload goes to `<path_with_namespace>/<run start>.tar.gz`, presigned for PUT.
    let started = UNIX_EPOCH + Duration::from_millis(run.started_ms);
    for e in &gitlab.exports {
        let url = e.upload_url.as_ref().unwrap();
        assert_eq!(url.host_str(), Some("backups.s3.eu-west-1.amazonaws.com"));
        let key = object_key("", gitlab.path_of(e.project_id), started);
        assert_eq!(url.path(), format!("/{key}"));
        assert!(url.query_pairs().any(|(n, _)| n == "X-Amz-Signature"));
    }
    assert_gitlab_window_respected(&gitlab.exports, 6);
    assert_eq!(gitlab.limited_by_itself(), 0);
}

#[test]
fn start_now_while_a_run_is_active_is_already_running_and_sends_nothing() {
    let (gitlab, _) = one_group(20, 6);
    let mut h = Harness::new(
        config(&[("SUBREQUESTS_PER_INVOCATION", "2")]),
        World::new(gitlab),
    );
    let first = h.tick(Start::Now);
    assert_eq!(first.began, Began::Ran);
    assert!(matches!(
        first.events().first(),
        Some(Event::RunStarted { manual: true, .. })
    ));
    let run = h.latest_run().unwrap();
    assert_ne!(run.phase, Phase::Finished);
    let sent = h.world.sent.len();
    h.world.now += 5 * SECOND;
    assert_eq!(h.tick(Start::Now).began, Began::AlreadyRunning(run.id));
    assert_eq!(
        h.world.sent.len(),
        sent,
        "no request for a refused manual start"
    );
    assert_eq!(h.store().recent_runs(10).unwrap().len(), 1);
}

#[test]
fn old_runs_lose_their_project_rows_batch_by_batch_and_then_pruning_stops() {
    // 30 projects: two batches of PRUNE_BATCH for each run that leaves the detailed window.
    let (gitlab, _) = one_group(30, 6);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    for run in 1..=4u64 {
        h.world.now = h.world.now.max(T0 + (run - 1) * DAY);
        assert_eq!(h.tick(Start::Now).began, Began::Ran);
        let finished = h.run_until_finished(T0 + (run - 1) * DAY + 2 * HOUR);
        assert_eq!((finished.id, finished.verified), (run, 30));
    }
    let count = |h: &Harness, run: u64| -> u64 {
        h.db.0
            .query_row(
                "SELECT COUNT(*) FROM projects WHERE run_id = ?1",
                [run as i64],
                |row| row.get::<_, i64>(0),
            )
            .unwrap() as u64
    };
    // Runs 1 and 2 left the detailed window (RUNS_KEPT_IN_DETAIL = 2) while runs 3 and 4 went.
    assert_eq!((count(&h, 1), count(&h, 2)), (0, 0));
    assert_eq!((count(&h, 3), count(&h, 4)), (30, 30));
    assert_eq!(
        h.store().recent_runs(10).unwrap().len(),
        4,
        "the runs themselves stay"
    );
    let meta = h.store().meta(&["pruned_below_run"]).unwrap();
    assert_eq!(
        meta.u64("pruned_below_run").unwrap(),
        Some(4),
        "done for the newest run"
    );
}

#[test]
fn a_tick_with_no_run_that_is_not_due_is_idle_and_sends_nothing() {
    let (gitlab, _) = one_group(3, 6);
    let mut h = Harness::new(
        config(&[("BACKUP_INTERVAL_HOURS", "24")]),
        World::new(gitlab),
    );
    // No run ever: due at once.
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!(run.started_ms, T0);
    let sent = h.world.sent.len();
    for after in [HOUR, 12 * HOUR, DAY - 1] {
        h.world.now = run.started_ms + after;
        assert_eq!(h.tick(Start::IfDue).began, Began::Idle, "+{after} ms");
    }
    assert_eq!(h.world.sent.len(), sent);
    h.world.now = run.started_ms + DAY;
    let tick = h.tick(Start::IfDue);
    assert_eq!(tick.began, Began::Ran);
    assert!(matches!(
        tick.events().first(),
        Some(Event::RunStarted {
            run: 2,
            manual: false,
            ..
        })
    ));

    // With a start hour and no run yet: idle outside the hour, a run inside it.
    let (gitlab, _) = one_group(3, 6);
    let mut h = Harness::new(
        config(&[("BACKUP_START_HOUR_UTC", "3")]),
        World::new(gitlab),
    );
    h.world.now = T0 + 2 * HOUR + 59 * MINUTE;
    assert_eq!(h.tick(Start::IfDue).began, Began::Idle);
    assert!(h.world.sent.is_empty());
    h.world.now = T0 + 3 * HOUR;
    assert_eq!(h.tick(Start::IfDue).began, Began::Ran);
}

#[test]
fn run_due_counts_the_interval_from_the_last_start() {
    let config = config(&[("BACKUP_INTERVAL_HOURS", "6")]);
    let last = T0 + 5 * HOUR + 17 * SECOND;
    assert!(run_due(&config, None, T0));
    assert!(!run_due(&config, Some(last), last));
    assert!(!run_due(&config, Some(last), last + 6 * HOUR - 1));
    assert!(run_due(&config, Some(last), last + 6 * HOUR));
    assert!(run_due(&config, Some(last), last + 30 * HOUR));
}

#[test]
fn with_a_start_hour_runs_start_only_during_that_hour_and_do_not_drift_out_of_it() {
    // (interval in hours, days between runs)
    for (interval, every) in [(1u64, 1u64), (12, 1), (24, 1), (48, 2)] {
        let config = config(&[
            ("BACKUP_INTERVAL_HOURS", &interval.to_string()),
            ("BACKUP_START_HOUR_UTC", "3"),
        ]);
        let mut rng = Rng::new(interval);
        let mut last: Option<u64> = None;
        let mut busy_until = 0;
        let mut starts = Vec::new();
        let mut minute = T0;
        while minute < T0 + 60 * DAY {
            // The cron tick fires a few seconds into its minute; now and then the worker is
            // away for a while (so a day's first tick in the hour may come late).
            let now = minute + rng.upto(20 * SECOND);
            minute += MINUTE;
            if rng.percent(1) {
                minute += rng.upto(50) * MINUTE;
            }
            if now < busy_until || !run_due(&config, last, now) {
                continue;
            }
            starts.push(now);
            last = Some(now);
            busy_until = now + rng.upto(3 * HOUR); // the run takes a while
        }
        assert!(
            starts.len() as u64 >= 60 / every - 1,
            "{interval} h: {starts:?}"
        );
        for pair in starts.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert_eq!(
                (a - T0) / HOUR % 24,
                3,
                "{interval} h: started outside the hour"
            );
            assert_eq!(
                (b - T0) / DAY - (a - T0) / DAY,
                every,
                "{interval} h: runs at +{} h and +{} h",
                (a - T0) / HOUR,
                (b - T0) / HOUR
            );
        }
    }
}

#[test]
fn a_lower_limit_learned_from_a_429_holds_for_a_while_then_the_setting_is_tried_again() {
    // GitLab allows 3 a minute, the setting 6; 90 projects take half an hour at 3.
    let (gitlab, ids) = one_group(90, 3);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let run = h.run_until_finished(T0 + 2 * HOUR);
    assert_eq!((run.verified, run.failed), (90, 0));
    let learned: Vec<(u64, u32)> = h
        .ticks
        .iter()
        .filter_map(|t| Some((t.started_ms, t.report.as_ref()?)))
        .flat_map(|(at, r)| {
            r.events.iter().filter_map(move |e| match e {
                Event::LimitLearned {
                    exports_per_minute, ..
                } => Some((at, *exports_per_minute)),
                _ => None,
            })
        })
        .collect();
    // Learned at the first 429, and again each time the setting is tried after the hold.
    assert!(learned.len() >= 2, "{learned:?}");
    assert!(learned.iter().all(|(_, limit)| *limit == 3), "{learned:?}");
    for pair in learned.windows(2) {
        assert!(
            pair[1].0 >= pair[0].0 + ms(LEARNED_LIMIT_HOLDS),
            "learned again before the hold ended: {learned:?}"
        );
    }
    // One 429 per hold at most (plus the first), and every project exported once.
    let refused = h.world.gitlab.limited_by_itself();
    let run_ms = run.finished_ms.unwrap() - T0;
    assert!(
        refused as u64 <= 1 + run_ms / ms(LEARNED_LIMIT_HOLDS),
        "{refused} 429s in {} min",
        run_ms / MINUTE
    );
    let accepted = h.world.gitlab.accepted();
    assert_eq!(accepted.keys().copied().collect::<Vec<_>>(), ids);
    assert!(accepted.values().all(|n| *n == 1));
}

#[test]
fn a_429_stops_the_ticks_exports_and_nothing_is_sent_before_retry_after_and_slack() {
    for retry_after in [Some(90), None] {
        let (mut gitlab, ids) = one_group(10, 6);
        gitlab.export_faults =
            FaultPlan::scripted(&[None, None, Some(Fault::TooMany(retry_after))]);
        let mut h = Harness::new(config(&[]), World::new(gitlab));
        h.fire_next();
        // Preflight and the listing, then (the alarm, at once) the exports.
        h.fire_next();
        let tick = h.ticks.last().unwrap();
        assert_eq!(tick.exports, 3, "exports stop at the 429");
        let limited = h.world.sent.len() - 1;
        let last = &h.world.sent[limited];
        assert!(
            last.export && last.answer == Ok(429),
            "the 429 is the tick's last request"
        );
        let wait = retry_after.unwrap_or(60) * SECOND + ms(RETRY_AFTER_SLACK);
        let until = last.done_ms + wait;
        let report = tick.report.as_ref().unwrap();
        // The tick wakes for the first check of the two accepted exports (they are not held
        // back: only the export endpoint answered 429), and the exports stay blocked till then.
        let first_accepted = h.world.sent.iter().find(|s| s.export).unwrap().done_ms;
        assert_eq!(
            report.wake_at_ms,
            Some(until.min(first_accepted + ms(FIRST_CHECK_AFTER)))
        );
        assert_eq!(
            h.store()
                .meta(&[META_BLOCKED_UNTIL])
                .unwrap()
                .u64(META_BLOCKED_UNTIL)
                .unwrap(),
            Some(until)
        );
        assert!(report.events.contains(&Event::RateLimited {
            retry_after_s: retry_after.unwrap_or(60)
        }));

        let run = h.run_until_finished(T0 + HOUR);
        assert_eq!((run.exported, run.verified), (10, 10));
        // Status checks may go meanwhile (another endpoint); the next export may not.
        let next = h.gitlab_sends_after(limited).find(|s| s.export).unwrap();
        assert!(
            next.sent_ms >= until,
            "sent at +{} ms, {} ms before Retry-After and slack passed",
            next.sent_ms - T0,
            until - next.sent_ms
        );
        let accepted = h.world.gitlab.accepted();
        assert_eq!(accepted.keys().copied().collect::<Vec<_>>(), ids);
        assert!(accepted.values().all(|n| *n == 1));
        assert_gitlab_window_respected(&h.world.gitlab.exports, 6);
    }
}

#[test]
fn a_429_on_a_listing_page_delays_the_listing_until_retry_after_and_slack() {
    let (mut gitlab, _) = one_group(250, 6);
    gitlab.listing_faults = FaultPlan::scripted(&[None, Some(Fault::TooMany(Some(120)))]);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    // One page per tick on the free plan: the second page comes with the alarm.
    h.fire_next();
    h.fire_next();
    let limited = h.world.sent.len() - 1;
    assert_eq!(h.world.sent[limited].answer, Ok(429));
    let until = h.world.sent[limited].done_ms + 120 * SECOND + ms(RETRY_AFTER_SLACK);
    assert_eq!(
        h.ticks.last().unwrap().report.as_ref().unwrap().wake_at_ms,
        Some(until)
    );
    h.run_until_finished(T0 + HOUR);
    let next = h.gitlab_sends_after(limited).next().unwrap();
    assert!(
        next.sent_ms >= until,
        "GitLab was asked again at +{} s, {} s before its Retry-After (and slack) passed",
        (next.sent_ms - T0) / SECOND,
        (until - next.sent_ms) / SECOND
    );
}

#[test]
#[ignore = "bug (offset pagination): a project deleted between two listing pages of its group \
            shifts the offsets, so the first project of the next page is never listed and goes \
            without a backup in that run; listing spans ticks (and backoffs), so the window is \
            real. A listing that resumes after the last id seen (keyset pagination, where \
            GitLab offers it for this endpoint) would not skip it"]
fn a_project_deleted_between_two_listing_pages_makes_no_other_project_go_unlisted() {
    let (mut gitlab, ids) = one_group(6, 6);
    gitlab.page_cap = 2;
    // Page 1 is [p0, p1]; then p0 is deleted.
    gitlab.delete_after_listings = Some((1, ids[0]));
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let run = h.run_until_finished(T0 + HOUR);
    let states = h.states(run.id);
    for id in &ids[1..] {
        assert_eq!(
            states.get(id).map(String::as_str),
            Some("verified"),
            "project {id} of {ids:?}: listed {:?}",
            states.keys().collect::<Vec<_>>()
        );
    }
    assert_eq!(states.get(&ids[0]).map(String::as_str), Some("failed"));
}

#[test]
fn a_short_429_on_a_status_check_does_not_shorten_the_wait_of_an_export_429() {
    let (mut gitlab, _) = one_group(10, 6);
    gitlab.export_faults = FaultPlan::scripted(&[None, None, Some(Fault::TooMany(Some(90)))]);
    // `GET /user` passes; the first status check (10 s later) is answered 429, Retry-After 5.
    gitlab.status_faults = FaultPlan::scripted(&[None, Some(Fault::TooMany(Some(5)))]);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    h.fire_next();
    // Preflight and the listing, then (the alarm, at once) the exports.
    h.fire_next();
    let limited = h.world.sent.len() - 1;
    assert!(h.world.sent[limited].export && h.world.sent[limited].answer == Ok(429));
    let until = h.world.sent[limited].done_ms + 90 * SECOND + ms(RETRY_AFTER_SLACK);
    h.run_until_finished(T0 + HOUR);
    assert!(h
        .world
        .sent
        .iter()
        .any(|s| !s.export && s.to_gitlab && s.answer == Ok(429)));
    let next = h.gitlab_sends_after(limited).find(|s| s.export).unwrap();
    assert!(
        next.sent_ms >= until,
        "an export went out {} s before the export's Retry-After and slack passed",
        (until - next.sent_ms) / SECOND
    );
}

#[test]
fn a_5xx_or_network_failure_keeps_the_project_pending_and_backs_off() {
    let failures = [
        Fault::Status(503),
        Fault::Status(500),
        Fault::LostRequest,
        Fault::LostAnswer,
    ];
    for fault in failures {
        let (mut gitlab, ids) = one_group(5, 6);
        let f = Some(fault);
        // p1 ok; p2 fails twice then goes; p3 ok; p4 fails once (after successes) then goes; p5.
        gitlab.export_faults = FaultPlan::scripted(&[None, f, f, None, None, f]);
        let mut h = Harness::new(config(&[]), World::new(gitlab));
        h.cron_jitter_ms = 3 * SECOND;
        h.fire_next();
        // Preflight and the listing, then (the alarm, at once) the exports.
        h.fire_next();
        let first = h.ticks.last().unwrap();
        assert_eq!(first.exports, 2, "{fault:?}: the tick stops at the failure");
        assert!(first
            .events()
            .iter()
            .any(|e| matches!(e, Event::RetryLater { .. })));
        let failed = h.world.sent.last().unwrap();
        assert!(failed.export && failed.answer != Ok(202));
        let states = h.states(1);
        assert_eq!(states[&ids[0]], "exported");
        assert_eq!(states[&ids[1]], "pending", "{fault:?}: no attempt lost");

        let run = h.run_until_finished(T0 + HOUR);
        assert_eq!(
            (run.exported, run.verified, run.failed),
            (5, 5, 0),
            "{fault:?}"
        );
        // Each failure is followed by silence towards GitLab for the backoff: 1 min, then
        // 2 min after a second failure in a row, and 1 min again once GitLab answered.
        let failures: Vec<usize> = h
            .world
            .sent
            .iter()
            .enumerate()
            .filter(|(_, s)| s.export && s.answer.as_ref().map_or(true, |status| *status >= 500))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(failures.len(), 3, "{fault:?}");
        for (failure, minutes) in failures.into_iter().zip([1, 2, 1]) {
            let until = h.world.sent[failure].done_ms + minutes * ms(BACKOFF_STEP);
            let next = h.gitlab_sends_after(failure).next().unwrap();
            assert!(
                next.sent_ms >= until,
                "{fault:?}: GitLab asked {} ms before the {minutes} min backoff ended",
                until - next.sent_ms
            );
        }
        assert_no_export_after_a_heard_outcome(&h.world.gitlab.exports);
        assert_gitlab_window_respected(&h.world.gitlab.exports, 6);
    }
}

#[test]
fn the_backoff_doubles_up_to_eight_minutes() {
    let (mut gitlab, _) = one_group(2, 6);
    let down = Some(Fault::Status(502));
    gitlab.export_faults = FaultPlan::scripted(&[down; 7]);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let run = h.run_until_finished(T0 + 2 * HOUR);
    assert_eq!(run.exported, 2);
    assert_eq!((run.verified, run.failed), (2, 0));
    let failures: Vec<&Sent> = h
        .world
        .sent
        .iter()
        .filter(|s| s.answer == Ok(502))
        .collect();
    assert_eq!(failures.len(), 7);
    for (pair, minutes) in failures.windows(2).zip([1u64, 2, 4, 8, 8, 8]) {
        let backoff = (minutes * ms(BACKOFF_STEP)).min(ms(BACKOFF_MAX));
        let gap = pair[1].sent_ms - pair[0].done_ms;
        assert!(
            gap >= backoff && gap < backoff + MINUTE + SECOND,
            "after a failure: {gap} ms, expected {backoff} ms (+ at most a cron period)"
        );
    }
}

#[test]
fn refusals_403_404_400_fail_the_project_with_the_documented_reasons() {
    let (mut gitlab, ids) = one_group(5, 6);
    gitlab.refusals.insert(ids[1], 403);
    gitlab.refusals.insert(ids[2], 404);
    gitlab.refusals.insert(ids[3], 400);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!(
        (run.listed, run.exported, run.verified, run.failed),
        (5, 2, 2, 3)
    );
    let path = |i: usize| h.world.gitlab.path_of(ids[i]).to_owned();
    assert_eq!(
        h.store().failures(run.id, 10).unwrap(),
        vec![
            (
                ids[1],
                path(1),
                "the token needs the Maintainer role on this project".to_owned()
            ),
            (ids[2], path(2), "project gone".to_owned()),
            (
                ids[3],
                path(3),
                format!("GitLab refused the export: {REFUSAL_400}")
            ),
        ]
    );
    // Each refused project was asked for once: a refusal is not retried.
    assert_eq!(h.world.gitlab.exports.len(), 5);
    let states = h.states(run.id);
    assert_eq!(states[&ids[0]], "verified");
    assert_eq!(states[&ids[1]], "failed");
    assert_eq!(states[&ids[4]], "verified");
    assert_landed_and_proven(&h, &run);
}

#[test]
fn a_group_answering_404_is_reported_and_other_groups_still_back_up() {
    let mut gitlab = SimGitLab::new(6);
    let acme = gitlab.add_group("acme", None);
    let beta = gitlab.add_group("beta", None);
    let mut expected = gitlab.add_projects(acme, 3);
    expected.extend(gitlab.add_projects(beta, 3));
    let mut h = Harness::new(
        config(&[("GROUPS_TO_BACKUP", "acme,ghost,424242,beta")]),
        World::new(gitlab),
    );
    let run = h.run_until_finished(T0 + HOUR);
    let not_visible = "the group does not exist or GITLAB_TOKEN cannot see it (404)".to_owned();
    assert_eq!(
        h.store().listing_errors(run.id).unwrap(),
        vec![
            ("ghost".to_owned(), not_visible.clone()),
            ("424242".to_owned(), not_visible)
        ]
    );
    assert_eq!(
        (run.listed, run.exported, run.verified, run.failed),
        (6, 6, 6, 0)
    );
    assert_landed_and_proven(&h, &run);
    assert_eq!(
        h.world.gitlab.accepted().into_keys().collect::<Vec<_>>(),
        expected
    );
    let group_failed = h
        .ticks
        .iter()
        .flat_map(|t| t.events())
        .filter(|e| matches!(e, Event::GroupFailed { .. }))
        .count();
    assert_eq!(group_failed, 2);
}

/// Four groups of 2,500 projects (100 pages), listed under `overrides`, until exports began.
fn list_ten_thousand(overrides: &[(&str, &str)]) -> Harness {
    let mut gitlab = SimGitLab::new(6);
    let mut groups = Vec::new();
    for name in ["acme", "beta", "gamma", "delta"] {
        let group = gitlab.add_group(name, None);
        gitlab.add_projects(group, 2_500);
        groups.push(name);
    }
    let groups = groups.join(",");
    let mut vars = vec![("GROUPS_TO_BACKUP", groups.as_str())];
    vars.extend_from_slice(overrides);
    let mut h = Harness::new(config(&vars), World::new(gitlab));
    h.run_until(T0 + HOUR, |h| h.world.gitlab.exports.len() >= 12);
    let run = h.latest_run().unwrap();
    assert_eq!(run.listed, 10_000);
    assert_eq!(run.phase, Phase::Exporting);
    assert_eq!(
        h.world.gitlab.listings.len(),
        100,
        "25 pages of 100 per group, each read once"
    );
    assert_gitlab_window_respected(&h.world.gitlab.exports, 6);
    h
}

fn listing_ticks(h: &Harness) -> Vec<&TickLog> {
    h.ticks
        .iter()
        .filter(|t| {
            t.events()
                .iter()
                .any(|e| matches!(e, Event::PageListed { .. }))
        })
        .collect()
}

fn pages_listed(t: &TickLog) -> usize {
    t.events()
        .iter()
        .filter(|e| matches!(e, Event::PageListed { .. }))
        .count()
}

#[test]
fn on_the_free_plan_each_tick_lists_one_page_and_the_alarm_goes_on_at_once() {
    // Defaults: 50 subrequests and 10 ms of CPU per invocation.
    let h = list_ten_thousand(&[]);
    assert_ticks_within_budget(&h.ticks, 50, 6);
    let ticks = listing_ticks(&h);
    assert_eq!(ticks.len(), 100);
    assert!(ticks.iter().all(|t| pages_listed(t) == 1));
    // A tick cut short by its page budget asks to be woken at once.
    for t in &ticks[..ticks.len() - 1] {
        let report = t.report.as_ref().unwrap();
        assert!(report.wake_at_ms.is_some_and(|w| w <= h.world.now));
    }
}

#[test]
fn with_cpu_to_spare_pages_are_read_ahead_up_to_the_subrequest_budget() {
    let h = list_ten_thousand(&[
        ("CPU_MS_PER_INVOCATION", "30000"),
        ("SUBREQUESTS_PER_INVOCATION", "50"),
    ]);
    assert_ticks_within_budget(&h.ticks, 50, 6);
    let ticks = listing_ticks(&h);
    // 2 preflight requests and 100 pages: 48 + 50 + 2 (then exports in the same tick).
    assert_eq!(
        ticks.iter().map(|t| pages_listed(t)).collect::<Vec<_>>(),
        vec![48, 50, 2]
    );
    // Pages of one group are read ahead of the cursor once GitLab gave the page count.
    let acme: Vec<u64> = h
        .world
        .gitlab
        .listings
        .iter()
        .filter(|l| l.group == "acme")
        .map(|l| l.page)
        .collect();
    assert_eq!(acme, (1..=25).collect::<Vec<_>>());
}

#[test]
fn a_page_that_fails_among_pages_read_ahead_is_read_again_and_nothing_is_lost() {
    let (mut gitlab, ids) = one_group(1_000, 6);
    // Page 1 alone (the count is not known yet), then pages 2..=7 together: page 3 fails.
    gitlab.listing_faults =
        FaultPlan::scripted(&[None, None, Some(Fault::Status(502)), None, None]);
    let mut h = Harness::new(
        config(&[("CPU_MS_PER_INVOCATION", "30000")]),
        World::new(gitlab),
    );
    let run = h.run_until_finished(T0 + 4 * HOUR);
    assert_eq!((run.listed, run.verified), (1_000, 1_000));
    let pages: Vec<(u64, u16)> = h
        .world
        .gitlab
        .listings
        .iter()
        .map(|l| (l.page, l.status))
        .collect();
    assert_eq!(
        &pages[..7],
        &[
            (1, 200),
            (2, 200),
            (3, 502),
            (4, 200),
            (5, 200),
            (6, 200),
            (7, 200)
        ]
    );
    // After the backoff the cursor is still on page 3: pages 3 to 10 are read, 4 to 7 again.
    let again: Vec<u64> = pages[7..].iter().map(|(page, _)| *page).collect();
    assert_eq!(again, (3..=10).collect::<Vec<_>>());
    let accepted = h.world.gitlab.accepted();
    assert_eq!(accepted.keys().copied().collect::<Vec<_>>(), ids);
    assert!(accepted.values().all(|n| *n == 1));
}

#[test]
fn without_aws_region_the_first_export_tick_learns_the_region_and_signs_for_it() {
    let (gitlab, ids) = one_group(8, 6);
    let mut world = World::new(gitlab);
    world.s3.region = Some("eu-west-3".into());
    let mut h = Harness::new(config(&[("AWS_REGION", "")]), world);
    assert_eq!(h.config.bucket.region, None);
    h.fire_next();
    assert_eq!(h.world.s3.probes.len(), 1);
    assert!(h.ticks[0].events().contains(&Event::RegionFound {
        bucket: BUCKET.into(),
        region: "eu-west-3".into()
    }));
    // The listing ends the first tick; the alarm's tick exports, signed for the learned region.
    h.fire_next();
    let tick = h.ticks.last().unwrap();
    assert_eq!(tick.exports, 6, "exports go on at once");
    assert_eq!(
        h.store()
            .meta(&[META_REGION])
            .unwrap()
            .text(META_REGION)
            .unwrap()
            .as_deref(),
        Some("eu-west-3")
    );
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.exported, run.verified), (8, 8));
    assert_eq!(h.world.s3.probes.len(), 1, "the region is asked once");
    assert_landed_and_proven(&h, &run);
    for e in &h.world.gitlab.exports {
        let url = e.upload_url.as_ref().unwrap();
        assert_eq!(url.host_str(), Some("backups.s3.eu-west-3.amazonaws.com"));
        let credential = url
            .query_pairs()
            .find(|(n, _)| n == "X-Amz-Credential")
            .unwrap()
            .1
            .into_owned();
        assert!(
            credential.contains("/eu-west-3/s3/aws4_request"),
            "{credential}"
        );
    }
    assert_eq!(
        h.world.gitlab.accepted().into_keys().collect::<Vec<_>>(),
        ids
    );
}

#[test]
fn without_a_region_header_an_error_is_noted_and_exports_wait() {
    let (gitlab, _) = one_group(4, 6);
    let mut world = World::new(gitlab);
    world.s3.region = None;
    let mut h = Harness::new(config(&[("AWS_REGION", "")]), world);
    for _ in 0..3 {
        h.fire_next();
    }
    assert_eq!(h.world.s3.probes.len(), 3, "one probe a tick");
    assert!(
        h.world.gitlab.exports.is_empty(),
        "no export without a region"
    );
    assert!(h.ticks.iter().all(|t| t.subrequests <= 2 && t.exports == 0));
    let error = h
        .store()
        .meta(&[META_LAST_ERROR])
        .unwrap()
        .text(META_LAST_ERROR)
        .unwrap()
        .unwrap();
    assert!(
        error.contains("could not learn the region of bucket backups")
            && error.contains("AWS_REGION"),
        "{error}"
    );
    // Without a region the preflight cannot write its probe: the run waits there.
    assert_eq!(h.latest_run().unwrap().phase, Phase::Preflight);
    assert!(h.world.s3.puts.is_empty());
    // Once S3 names it, exports go.
    h.world.s3.region = Some("ap-south-1".into());
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.exported, run.verified), (4, 4));
    assert_landed_and_proven(&h, &run);
}

#[test]
fn a_worker_that_dies_before_sending_an_export_loses_no_project_and_sends_each_once() {
    let (gitlab, ids) = one_group(9, 6);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let mut exports = 0;
    h.crash = Box::new(move |request| {
        exports += u32::from(is_export(request));
        (is_export(request) && exports == 2).then_some(Crash::BeforeSend)
    });
    let run = h.run_until_finished(T0 + HOUR);
    // Tick 0 lists; tick 1 (the alarm) exports and dies.
    assert_eq!(h.ticks[1].crashed, Some(Crash::BeforeSend));
    assert_eq!((run.exported, run.verified, run.failed), (9, 9, 0));
    let accepted = h.world.gitlab.accepted();
    assert_eq!(accepted.keys().copied().collect::<Vec<_>>(), ids);
    assert!(accepted.values().all(|n| *n == 1));
    assert_gitlab_window_respected(&h.world.gitlab.exports, 6);
}

#[test]
fn a_worker_that_dies_while_an_export_is_in_flight_asks_for_it_again_within_the_limit() {
    let (gitlab, ids) = one_group(9, 6);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let mut exports = 0;
    h.crash = Box::new(move |request| {
        exports += u32::from(is_export(request));
        (is_export(request) && exports == 2).then_some(Crash::InFlight)
    });
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.exported, run.verified, run.failed), (9, 9, 0));
    let accepted = h.world.gitlab.accepted();
    assert_eq!(accepted.keys().copied().collect::<Vec<_>>(), ids);
    // The worker cannot know GitLab got it: that one project goes twice, no other.
    assert_eq!(accepted[&ids[1]], 2);
    assert_eq!(accepted.values().sum::<usize>(), 10);
    assert_no_export_after_a_heard_outcome(&h.world.gitlab.exports);
    assert_gitlab_window_respected(&h.world.gitlab.exports, 6);
    assert_eq!(h.world.gitlab.limited_by_itself(), 0);
}

#[test]
fn an_export_in_flight_when_the_worker_died_counts_until_it_must_have_reached_gitlab() {
    // One export a minute. The worker dies right after sending the first export, which takes
    // 25 s to reach GitLab and opens GitLab's window there; the retry must wait for that
    // window, not for one counted from the send.
    let (gitlab, ids) = one_group(2, 1);
    let mut world = World::new(gitlab);
    // The user check, the preflight PUT and the listing page (two legs each), then the export.
    world.scripted_legs = [100, 100, 100, 100, 100, 100, 25 * SECOND].into();
    let mut h = Harness::new(config(&[("EXPORTS_PER_MINUTE", "1")]), world);
    let mut exports = 0;
    h.crash = Box::new(move |request| {
        exports += u32::from(is_export(request));
        (is_export(request) && exports == 1).then_some(Crash::InFlight)
    });
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.exported, run.verified), (2, 2));
    let gitlab = &h.world.gitlab;
    assert_eq!(
        gitlab.exports[0].at_ms - gitlab.exports[0].sent_ms,
        25 * SECOND
    );
    let arrivals: Vec<(u64, u64, u16)> = gitlab
        .exports
        .iter()
        .map(|e| (e.sent_ms - T0, e.at_ms - T0, e.status))
        .collect();
    assert_eq!(
        gitlab.limited_by_itself(),
        0,
        "(sent, arrived, status): {arrivals:?}"
    );
    assert_gitlab_window_respected(&gitlab.exports, 1);
    assert_eq!(
        gitlab.accepted()[&ids[0]],
        2,
        "asked again: the worker never heard"
    );
}

#[test]
fn a_worker_that_dies_after_recording_an_answer_repeats_nothing() {
    let (gitlab, ids) = one_group(9, 6);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let mut steps = 0;
    h.crash = Box::new(move |_| {
        steps += 1;
        (steps % 4 == 0).then_some(Crash::AfterHandle)
    });
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.exported, run.verified, run.failed), (9, 9, 0));
    let accepted = h.world.gitlab.accepted();
    assert_eq!(accepted.keys().copied().collect::<Vec<_>>(), ids);
    assert!(accepted.values().all(|n| *n == 1));
    assert_gitlab_window_respected(&h.world.gitlab.exports, 6);
}

#[test]
fn a_gitlab_stricter_than_exports_per_minute_is_obeyed_through_its_429s() {
    for retry_after_header in [true, false] {
        let (mut gitlab, ids) = one_group(20, 3);
        gitlab.retry_after_header = retry_after_header;
        let mut h = Harness::new(config(&[]), World::new(gitlab));
        let run = h.run_until_finished(T0 + 2 * HOUR);
        assert_eq!((run.exported, run.verified, run.failed), (20, 20, 0));
        assert_eq!(
            h.world.gitlab.accepted().into_keys().collect::<Vec<_>>(),
            ids
        );
        // The first 429 teaches the worker GitLab's limit: at most one more in the whole run.
        let refused = h.world.gitlab.limited_by_itself();
        assert!((1..=2).contains(&refused), "{refused} answers 429");
        // … and keeps to it fully: 20 exports at 3 a minute, then the last proofs.
        let took = run.finished_ms.unwrap() - run.started_ms;
        assert!(took <= (20u64.div_ceil(3) + 3) * MINUTE, "took {took} ms");
        for (i, s) in h.world.sent.iter().enumerate() {
            if s.answer == Ok(429) {
                // Only exports are limited (and only they answered 429): the next export waits.
                assert!(s.export);
                let next = h.gitlab_sends_after(i).find(|s| s.export).unwrap();
                assert!(next.sent_ms >= s.done_ms + ms(RETRY_AFTER_SLACK));
            }
        }
    }
}

#[test]
fn at_production_cadence_six_per_minute_exports_n_projects_in_about_n_over_6_minutes() {
    for n in [1usize, 6, 7, 60] {
        let (gitlab, _) = one_group(n, 6);
        let mut world = World::new(gitlab);
        world.leg_ms = (50, 400);
        let mut h = Harness::new(config(&[]), world);
        h.cron_jitter_ms = 2 * SECOND;
        // One minute more than the exports alone: the run finishes only once the last
        // exports are proven (first checked FIRST_CHECK_AFTER after GitLab accepted them,
        // then every CHECK_EVERY), and their manifest and summary are written.
        let bound = (n.div_ceil(6) as u64 + 3) * MINUTE;
        let run = h.run_until_finished(T0 + bound);
        let took = run.finished_ms.unwrap() - run.started_ms;
        assert!(took <= bound, "{n} projects took {took} ms");
        assert_eq!((run.exported, run.verified), (n as u64, n as u64));
        assert_landed_and_proven(&h, &run);
        assert_gitlab_window_respected(&h.world.gitlab.exports, 6);
        assert_eq!(h.world.gitlab.limited_by_itself(), 0);
    }
}

#[test]
fn an_accepted_export_is_checked_after_first_check_after_then_every_check_every_until_proven() {
    // GitLab takes 100 s to build the export: the checks find it queued or started, then
    // finished; only then does a HEAD look in the bucket.
    let (mut gitlab, ids) = one_group(1, 6);
    gitlab.build_ms = (100 * SECOND, 100 * SECOND);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.exported, run.verified, run.failed), (1, 1, 0));
    let gitlab = &h.world.gitlab;
    let accepted = gitlab.exports[0].at_ms;
    let checks: Vec<u64> = gitlab
        .status_checks
        .iter()
        .map(|(at, id, _)| {
            assert_eq!(*id, ids[0]);
            at - accepted
        })
        .collect();
    assert_eq!(
        checks.len(),
        4,
        "at +10 s, +40 s, +70 s, +100 s: {checks:?}"
    );
    assert!(checks[0] >= ms(FIRST_CHECK_AFTER));
    for pair in checks.windows(2) {
        assert!(pair[1] - pair[0] >= ms(CHECK_EVERY), "{checks:?}");
    }
    let heads = &h.world.s3.heads;
    assert_eq!(heads.len(), 1, "one HEAD, after GitLab said finished");
    assert_eq!(heads[0].2, 200);
    assert_landed_and_proven(&h, &run);
}

#[test]
fn an_export_gitlab_cannot_build_fails_after_max_attempts_with_the_reason() {
    let (mut gitlab, ids) = one_group(3, 6);
    gitlab.build_failures.insert(ids[1]);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let run = h.run_until_finished(T0 + 2 * HOUR);
    assert_eq!(
        (run.exported, run.verified, run.failed),
        (3, 2, 1),
        "{}",
        h.describe()
    );
    let path = h.world.gitlab.path_of(ids[1]).to_owned();
    assert_eq!(
        h.store().failures(run.id, 10).unwrap(),
        vec![(
            ids[1],
            path,
            "GitLab could not build the export (after 3 attempts)".to_owned()
        )]
    );
    assert_eq!(h.world.gitlab.accepted()[&ids[1]], 3);
    let retried = BTreeMap::from([(ids[1], (ms(FIRST_CHECK_AFTER), 3))]);
    assert_no_export_after_a_heard_outcome_but_retries(&h.world.gitlab.exports, &retried);
    assert_landed_and_proven(&h, &run);
}

#[test]
fn a_project_whose_export_always_answers_500_goes_behind_the_others_then_fails_with_the_reason() {
    let (mut gitlab, ids) = one_group(12, 6);
    gitlab.refusals.insert(ids[0], 500);
    let mut h = Harness::new(config(&[("MAX_ATTEMPTS", "2")]), World::new(gitlab));
    let run = h.run_until_finished(T0 + 6 * HOUR);
    assert_eq!((run.verified, run.failed), (11, 1), "{}", h.describe());
    let failures = h.store().failures(run.id, 10).unwrap();
    assert_eq!(failures[0].0, ids[0]);
    assert!(
        failures[0]
            .2
            .starts_with("GitLab gave no usable answer to 6 export requests in a row")
            && failures[0].2.ends_with("(after 2 attempts)"),
        "{}",
        failures[0].2
    );
    // It was asked UNANSWERED_PER_ATTEMPT times per attempt, and never held the others back:
    // the second project went out right after the first failure's backoff.
    let asked = h
        .world
        .gitlab
        .exports
        .iter()
        .filter(|e| e.project_id == ids[0])
        .count();
    assert_eq!(asked, 6);
    let second = h
        .world
        .gitlab
        .exports
        .iter()
        .position(|e| e.project_id == ids[1])
        .unwrap();
    assert_eq!(
        second, 1,
        "the next export after the 500 is another project"
    );
    assert_gitlab_window_respected(&h.world.gitlab.exports, 6);
}

#[test]
fn an_export_stuck_in_gitlabs_queue_fails_after_verify_timeout_and_the_run_ends() {
    let (mut gitlab, ids) = one_group(2, 6);
    // Every build takes three hours: longer than VERIFY_TIMEOUT_MINUTES.
    gitlab.build_ms = (3 * HOUR, 3 * HOUR);
    let mut h = Harness::new(
        config(&[("VERIFY_TIMEOUT_MINUTES", "10"), ("MAX_ATTEMPTS", "2")]),
        World::new(gitlab),
    );
    let run = h.run_until_finished(T0 + 2 * HOUR);
    assert_eq!((run.exported, run.verified, run.failed), (2, 0, 2));
    for (id, path, reason) in h.store().failures(run.id, 10).unwrap() {
        assert!(ids.contains(&id), "{path}");
        assert_eq!(
            reason,
            "GitLab's export stayed queued or started for more than 10 minutes (after 2 attempts)"
        );
    }
    assert!(ids.iter().all(|id| h.world.gitlab.accepted()[id] == 2));
}

#[test]
fn an_upload_that_never_lands_fails_after_max_attempts_of_verify_timeout() {
    let (mut gitlab, ids) = one_group(2, 6);
    gitlab.lost_uploads.insert(ids[0]);
    let mut h = Harness::new(
        config(&[("VERIFY_TIMEOUT_MINUTES", "10"), ("MAX_ATTEMPTS", "2")]),
        World::new(gitlab),
    );
    let run = h.run_until_finished(T0 + 2 * HOUR);
    assert_eq!((run.exported, run.verified, run.failed), (2, 1, 1));
    let failures = h.store().failures(run.id, 10).unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, ids[0]);
    assert!(
        failures[0]
            .2
            .starts_with("the upload never arrived within 10 minutes (GitLab reported the export finished; S3 answers 404)")
            && failures[0].2.ends_with("(after 2 attempts)"),
        "{}",
        failures[0].2
    );
    let exports: Vec<u64> = h
        .world
        .gitlab
        .exports
        .iter()
        .filter(|e| e.project_id == ids[0])
        .map(|e| e.at_ms)
        .collect();
    assert_eq!(exports.len(), 2);
    assert!(exports[1] - exports[0] >= 10 * MINUTE + ms(RETRY_BACKOFF[0]));
    // The run ends once the second attempt timed out too.
    assert!(run.finished_ms.unwrap() >= exports[1] + 10 * MINUTE);
    assert_landed_and_proven(&h, &run);
}

#[test]
fn a_refused_token_or_bucket_stops_the_run_in_preflight_before_any_export() {
    // 401 on GET /user.
    let (mut gitlab, _) = one_group(3, 6);
    gitlab.token = "glpat-other".into();
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let run = h.run_until_finished(T0 + HOUR);
    let error = run.error.clone().unwrap();
    assert!(
        error.starts_with("stopped before any export:") && error.contains("401"),
        "{error}"
    );
    assert!(h.world.gitlab.listings.is_empty() && h.world.gitlab.exports.is_empty());
    assert!(h.world.s3.puts.is_empty());
    assert_eq!(run.summary_key, None);

    // 403 on the preflight PUT.
    let (gitlab, _) = one_group(3, 6);
    let mut world = World::new(gitlab);
    world.s3.put_status = Some(403);
    let mut h = Harness::new(config(&[]), world);
    let run = h.run_until_finished(T0 + HOUR);
    let error = run.error.clone().unwrap();
    assert!(
        error.contains("refused a signed PUT (403)") && error.contains("AccessDenied"),
        "{error}"
    );
    assert_eq!(h.world.gitlab.user_checks.len(), 1);
    assert!(h.world.gitlab.listings.is_empty() && h.world.gitlab.exports.is_empty());

    // 503 on the preflight PUT: tried again, then the run goes on.
    let (gitlab, _) = one_group(3, 6);
    let mut world = World::new(gitlab);
    world.s3.put_status = Some(503);
    let mut h = Harness::new(config(&[]), world);
    h.fire_next();
    h.fire_next();
    assert_eq!(h.latest_run().unwrap().phase, Phase::Preflight);
    assert!(h.world.gitlab.exports.is_empty());
    h.world.s3.put_status = None;
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.verified, run.error.as_deref()), (3, None));
    assert_landed_and_proven(&h, &run);
}

// =============================================================================================
// Property tests.

#[derive(Clone, Debug)]
struct Scenario {
    projects: usize,
    groups: usize,
    page_cap: u64,
    budget: u32,
    per_minute: u32,
    /// Chance (percent) of a fault on each GitLab request.
    fault_percent: u32,
    /// Chance (percent) that the worker dies at a step.
    crash_percent: u32,
    /// Chance (percent) that GitLab always refuses a project.
    refusal_percent: u32,
    /// Chance (percent) that GitLab accepts a project's exports but can never build them.
    build_failure_percent: u32,
    /// Chance (percent) that a project's uploads never reach the bucket (GitLab says
    /// `finished` all the same).
    lost_upload_percent: u32,
    cron_jitter_s: u64,
    /// Whether events sometimes come minutes late.
    late: bool,
    retry_after_header: bool,
    seed: u64,
}

struct Simulated {
    h: Harness,
    expected: BTreeSet<u64>,
    refused: BTreeSet<u64>,
    build_failures: BTreeSet<u64>,
    lost_uploads: BTreeSet<u64>,
}

/// `VERIFY_TIMEOUT_MINUTES` in the property tests: shorter than the default, so runs with lost
/// uploads end in simulated hours rather than a day, yet long enough that under the heaviest
/// faults (backoffs, late events) a landed upload is proven before it (with 30 min, checks
/// sometimes came later and an S3 timeout on the HEAD then failed the attempt).
const VERIFY_TIMEOUT_MINUTES: u64 = 120;
/// `MAX_ATTEMPTS` in the property tests (the default).
const MAX_ATTEMPTS: u64 = 3;

fn random_fault(rng: &mut Rng) -> Fault {
    match rng.upto(5) {
        0 => Fault::TooMany(Some(rng.upto(90))),
        1 => Fault::TooMany(None),
        2 => Fault::Status(rng.pick(&[500, 502, 503, 504])),
        3 => Fault::LostRequest,
        _ => Fault::LostAnswer,
    }
}

fn simulate(s: &Scenario) -> Simulated {
    let mut rng = Rng::new(s.seed);
    let mut gitlab = SimGitLab::new(s.per_minute);
    gitlab.page_cap = s.page_cap;
    gitlab.retry_after_header = s.retry_after_header;
    let mut configured: Vec<usize> = Vec::new();
    for i in 0..s.groups {
        let parent = (i > 0 && rng.percent(40)).then(|| rng.pick(&configured));
        configured.push(gitlab.add_group(&format!("team-{i}"), parent));
    }
    let nested = gitlab.add_group("nested", Some(configured[0]));
    let outside = gitlab.add_group("outside", None);
    let mut all = configured.clone();
    all.extend([nested, outside]);
    for _ in 0..s.projects {
        let group = rng.pick(&all);
        let id = gitlab.add_projects(group, 1)[0];
        if group == outside || rng.percent(10) {
            let with = rng.pick(&configured);
            gitlab.share(id, with);
        }
        if rng.percent(5) {
            gitlab.project_mut(id).archived = true;
        }
    }
    let refs: Vec<String> = configured
        .iter()
        .map(|g| {
            let group = &gitlab.groups[*g];
            if rng.percent(50) {
                group.id.to_string()
            } else {
                group.full_path.clone()
            }
        })
        .collect();
    let config = config(&[
        ("GROUPS_TO_BACKUP", &refs.join(",")),
        ("EXPORTS_PER_MINUTE", &s.per_minute.to_string()),
        ("SUBREQUESTS_PER_INVOCATION", &s.budget.to_string()),
        (
            "VERIFY_TIMEOUT_MINUTES",
            &VERIFY_TIMEOUT_MINUTES.to_string(),
        ),
        ("MAX_ATTEMPTS", &MAX_ATTEMPTS.to_string()),
    ]);
    let expected = gitlab.own_projects(&config.groups, true, true);
    let mut refused = BTreeSet::new();
    for id in &expected {
        if rng.percent(s.refusal_percent) {
            gitlab.refusals.insert(*id, rng.pick(&[403, 404, 400]));
            refused.insert(*id);
        }
    }
    let mut broken = Rng::new(s.seed ^ 0xB0);
    for id in expected.difference(&refused) {
        if broken.percent(s.build_failure_percent) {
            gitlab.build_failures.insert(*id);
        } else if broken.percent(s.lost_upload_percent) {
            gitlab.lost_uploads.insert(*id);
        }
    }
    let build_failures = gitlab.build_failures.clone();
    let lost_uploads = gitlab.lost_uploads.clone();
    gitlab.build_rng = Rng::new(s.seed ^ 0xB1);
    if s.fault_percent > 0 {
        let (chance, mut faults) = (s.fault_percent, Rng::new(s.seed ^ 0xFA));
        gitlab.export_faults.random = Some(Box::new(move || {
            faults.percent(chance).then(|| random_fault(&mut faults))
        }));
        let (chance, mut faults) = (s.fault_percent / 2, Rng::new(s.seed ^ 0xFB));
        gitlab.listing_faults.random = Some(Box::new(move || {
            faults.percent(chance).then(|| random_fault(&mut faults))
        }));
        // 429s on status checks with any Retry-After: a short one must not shorten a
        // pending export block.
        let (chance, mut faults) = (s.fault_percent / 2, Rng::new(s.seed ^ 0xFC));
        gitlab.status_faults.random = Some(Box::new(move || {
            faults.percent(chance).then(|| random_fault(&mut faults))
        }));
    }
    let mut world = World::new(gitlab);
    world.rng = Rng::new(s.seed ^ 0x1A7);
    world.leg_ms = (10, 1_500);
    world.slow_percent = s.fault_percent / 5;
    let mut h = Harness::new(config, world);
    h.rng = Rng::new(s.seed ^ 0xC0);
    h.cron_jitter_ms = s.cron_jitter_s * SECOND;
    if s.late {
        h.late = (3, 10 * MINUTE);
    }
    if s.crash_percent > 0 {
        let (chance, mut crashes) = (s.crash_percent, Rng::new(s.seed ^ 0xDE));
        h.crash = Box::new(move |_| {
            crashes
                .percent(chance)
                .then(|| crashes.pick(&[Crash::BeforeSend, Crash::InFlight, Crash::AfterHandle]))
        });
    }
    // Runs under the worst faults take under three times the ideal pace; a run still going
    // after twice that (and two hours) is stuck.
    // Lost uploads take MAX_ATTEMPTS verify timeouts and the retry backoffs on top.
    let rounds = (s.projects as u64).div_ceil(u64::from(s.per_minute)) + 5;
    let lost = if lost_uploads.is_empty() {
        0
    } else {
        MAX_ATTEMPTS * VERIFY_TIMEOUT_MINUTES * MINUTE + ms(RETRY_BACKOFF[0] + RETRY_BACKOFF[1])
    };
    h.run_until_finished(T0 + 2 * HOUR + rounds * 6 * MINUTE + 2 * lost);
    Simulated {
        h,
        expected,
        refused,
        build_failures,
        lost_uploads,
    }
}

/// Properties (1) to (4) of every scenario.
fn check(s: &Scenario, sim: &Simulated) {
    let Simulated {
        h,
        expected,
        refused,
        build_failures,
        lost_uploads,
    } = sim;
    let gitlab = &h.world.gitlab;
    // (1) GitLab's limit, by arrival time, in any 60 s window (export requests only: status
    // checks and HEADs do not count); never a 429 of its own.
    assert_gitlab_window_respected(&gitlab.exports, s.per_minute);
    assert_eq!(gitlab.limited_by_itself(), 0, "GitLab limited the worker");
    // (2) Each tick within its subrequest budget (checks and HEADs included) and
    // EXPORTS_PER_MINUTE.
    assert_ticks_within_budget(&h.ticks, s.budget, s.per_minute);
    // (3) The run finished; every listed project has exactly one final outcome; none lost:
    // verified, or failed with its reason (refused; or after MAX_ATTEMPTS accepted attempts
    // whose build failed or whose upload never landed).
    let run = h.latest_run().unwrap();
    assert_eq!((run.id, run.phase), (1, Phase::Finished));
    let states = h.states(run.id);
    assert_eq!(
        states.keys().copied().collect::<BTreeSet<_>>(),
        *expected,
        "the run holds exactly the own projects of the groups"
    );
    let accepted = gitlab.accepted();
    let heard = gitlab.accepted_heard();
    let reasons: BTreeMap<u64, String> = h
        .store()
        .failures(run.id, u64::MAX >> 1)
        .unwrap()
        .into_iter()
        .map(|(id, _, reason)| (id, reason))
        .collect();
    let after = format!("(after {MAX_ATTEMPTS} attempts)");
    for (id, state) in &states {
        let broken = build_failures.contains(id) || lost_uploads.contains(id);
        let outcome = if refused.contains(id) || broken {
            "failed"
        } else {
            "verified"
        };
        assert_eq!(state, outcome, "project {id}");
        if state == "verified" {
            assert!(
                accepted.contains_key(id),
                "{id} recorded but never accepted"
            );
        }
        let reason = reasons.get(id).map(String::as_str).unwrap_or_default();
        // Injected faults can also leave three export requests of a broken project without an
        // answer in a row: that uses one of its attempts too, and may be the last one.
        let unanswered = reason
            .starts_with("GitLab gave no usable answer to 3 export requests in a row")
            && reason.ends_with(&after);
        if unanswered {
            assert!(broken, "project {id}: {reason}");
        } else if refused.contains(id) {
            let expected = match gitlab.refusals[id] {
                403 => "the token needs the Maintainer role on this project".to_owned(),
                404 => "project gone".to_owned(),
                _ => format!("GitLab refused the export: {REFUSAL_400}"),
            };
            assert_eq!(reason, expected, "project {id}");
        } else if build_failures.contains(id) {
            assert_eq!(
                reason,
                format!("GitLab could not build the export {after}"),
                "project {id}"
            );
        } else if lost_uploads.contains(id) {
            let never_arrived =
                format!("the upload never arrived within {VERIFY_TIMEOUT_MINUTES} minutes");
            assert!(
                (reason.starts_with(&never_arrived)
                    || reason.starts_with("S3 did not answer the check"))
                    && reason.ends_with(&after),
                "project {id}: {reason}"
            );
        }
        if broken {
            // It used all its attempts: each an accepted export the worker heard, or three
            // export requests in a row that got no usable answer.
            assert_eq!(
                h.attempts(run.id, *id),
                MAX_ATTEMPTS,
                "project {id}: attempts used"
            );
            let heard = heard.get(id).copied().unwrap_or(0);
            assert!(
                heard <= MAX_ATTEMPTS as usize,
                "project {id}: {heard} accepted exports heard"
            );
            if !unanswered {
                assert!(heard > 0, "project {id}: {reason}, with no export accepted");
            }
        }
    }
    let failed = refused.len() + build_failures.len() + lost_uploads.len();
    assert_eq!(
        (run.listed, run.exported, run.verified, run.failed),
        (
            expected.len() as u64,
            (expected.len() - refused.len()) as u64,
            (expected.len() - failed) as u64,
            failed as u64
        )
    );
    assert_landed_and_proven(h, &run);
    assert!(gitlab
        .exports
        .iter()
        .all(|e| expected.contains(&e.project_id)));
    // (4) No project twice, but after an answer the worker never heard, or after an attempt
    // that failed (then only once the failure could be known, and after RETRY_BACKOFF).
    let mut retried = BTreeMap::new();
    for id in build_failures {
        retried.insert(*id, (ms(FIRST_CHECK_AFTER), MAX_ATTEMPTS));
    }
    for id in lost_uploads {
        retried.insert(*id, (VERIFY_TIMEOUT_MINUTES * MINUTE, MAX_ATTEMPTS));
    }
    for t in &h.ticks {
        for e in t.events() {
            if let Event::RetryScheduled {
                project_id, reason, ..
            } = e
            {
                // Three export requests of one project left without an answer in a row (the
                // injected faults) also use an attempt; the project still ends verified.
                assert!(
                    retried.contains_key(project_id)
                        || reason.starts_with("GitLab gave no usable answer to 3 export requests"),
                    "project {project_id}: an attempt failed at +{} s: {reason}",
                    (t.started_ms - T0) / SECOND
                );
            }
        }
    }
    assert_no_export_after_a_heard_outcome_but_retries(&gitlab.exports, &retried);
    // No project is checked before GitLab accepted it, nor sooner than FIRST_CHECK_AFTER.
    for (at, id, _) in &gitlab.status_checks {
        assert!(
            gitlab.exports.iter().any(|e| e.project_id == *id
                && e.status == 202
                && e.at_ms + ms(FIRST_CHECK_AFTER) <= *at),
            "project {id} checked at +{} ms before its export was due a check",
            at - T0
        );
    }
    // And the waits GitLab asks for are kept.
    assert_waits_kept(&h.world.sent);
}

/// After a 429 the worker heard, no export request goes out before `Retry-After` (60 s when
/// absent) and the slack, and after a 429 on anything but an export no GitLab request at all;
/// after a 5xx or a network failure it heard, no GitLab request at all goes out before the
/// first backoff step.
fn assert_waits_kept(sent: &[Sent]) {
    for (i, s) in sent
        .iter()
        .enumerate()
        .filter(|(_, s)| s.heard && s.to_gitlab)
    {
        let mut later = sent[i + 1..].iter().filter(|n| n.to_gitlab);
        if s.answer == Ok(429) {
            let until = s.done_ms + s.retry_after_s.unwrap_or(60) * SECOND + ms(RETRY_AFTER_SLACK);
            let held_back = s.export;
            if let Some(next) = later.find(|n| n.export || !held_back) {
                assert!(
                    next.sent_ms >= until,
                    "a GitLab request (export: {}) went out {} ms before Retry-After and slack \
                     passed after a 429 (on an export: {}); requests since: {:?}",
                    next.export,
                    until - next.sent_ms,
                    s.export,
                    sent[i..]
                        .iter()
                        .take_while(|n| n.sent_ms <= next.sent_ms)
                        .map(|n| (
                            n.sent_ms - s.sent_ms,
                            n.to_gitlab,
                            n.export,
                            n.answer.clone(),
                            n.retry_after_s
                        ))
                        .collect::<Vec<_>>()
                );
            }
        } else if s.answer.as_ref().map_or(true, |status| *status >= 500) {
            let until = s.done_ms + ms(BACKOFF_STEP);
            if let Some(next) = later.next() {
                assert!(
                    next.sent_ms >= until,
                    "GitLab was asked {} ms into the backoff after {:?}",
                    until - next.sent_ms,
                    s.answer
                );
            }
        }
    }
}

fn scenario(faulty: bool) -> impl Strategy<Value = Scenario> {
    let faults = if faulty { 0u32..=15 } else { 0u32..=0 };
    let crashes = if faulty { 0u32..=8 } else { 0u32..=0 };
    let refusals = if faulty { 0u32..=10 } else { 0u32..=0 };
    let broken = if faulty { 0u32..=5 } else { 0u32..=0 };
    (
        (0usize..=300, 1usize..=4, 1u64..=100, 2u32..=60, 1u32..=10),
        (
            faults,
            crashes,
            refusals,
            broken.clone(),
            broken,
            0u64..=25,
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
        ),
    )
        .prop_map(
            move |(
                (projects, groups, page_cap, budget, per_minute),
                (
                    fault_percent,
                    crash_percent,
                    refusal_percent,
                    build_failure_percent,
                    lost_upload_percent,
                    cron_jitter_s,
                    late,
                    retry_after_header,
                    seed,
                ),
            )| Scenario {
                projects,
                groups,
                page_cap,
                budget,
                per_minute,
                fault_percent,
                crash_percent,
                refusal_percent,
                build_failure_percent,
                lost_upload_percent,
                cron_jitter_s,
                late: late && faulty,
                retry_after_header,
                seed,
            },
        )
}

/// Few cases by default, so the whole file runs in a few seconds; `PROPTEST_CASES=2000` soaks.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// With 429s, 5xx, lost requests and answers, timeouts, refusals, restarts at any step,
    /// cron jitter and late events: (1) to (4) hold.
    #[test]
    fn prop_under_faults_and_restarts_the_limit_holds_and_every_project_ends_once(
        s in scenario(true)
    ) {
        let sim = simulate(&s);
        check(&s, &sim);
    }

    /// Without faults: also every own project exported exactly once, never a 429, and the run
    /// goes at EXPORTS_PER_MINUTE (each slot busy one minute plus the round trip).
    #[test]
    fn prop_without_faults_every_own_project_is_exported_exactly_once_at_full_pace(
        s in scenario(false)
    ) {
        let sim = simulate(&s);
        check(&s, &sim);
        let gitlab = &sim.h.world.gitlab;
        prop_assert!(gitlab.exports.iter().all(|e| e.status == 202));
        prop_assert_eq!(gitlab.exports.len(), sim.expected.len());
        let run = sim.h.latest_run().unwrap();
        let listed_at = gitlab.listings.iter().map(|l| l.at_ms).max().unwrap_or(T0);
        let rounds = (sim.expected.len() as u64).div_ceil(u64::from(s.per_minute));
        let bound = listed_at + rounds * (MINUTE + 3 * SECOND) + 2 * MINUTE + 2 * s.cron_jitter_s * SECOND;
        prop_assert!(
            run.finished_ms.unwrap() <= bound,
            "finished {} s after listing, bound {} s",
            (run.finished_ms.unwrap() - listed_at) / SECOND,
            (bound - listed_at) / SECOND
        );
    }
}
