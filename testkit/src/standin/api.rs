//! The HTTP surface: the axum router, token authentication, GitLab-shaped error answers, and the
//! handlers of the GitLab REST v4 endpoints the backup needs plus the unauthenticated
//! `/__standin/*` record endpoints for out-of-process scripts.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{OriginalUri, Path, Query, RawQuery, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use serde_json::json;
use url::Url;

use super::export::{self, ExportParams};
use super::import;
use super::listing::{boolean, ListingQuery};
use super::repr::{ExportStatusJson, GroupJson, ProjectDetailJson, ProjectJson, SimpleProjectJson};
use super::seed::Project;
use super::state::{DeletionRecord, ExportRecord, HeldRecord, ProjectRef, RateLimited, Shared};
use super::HoldStage;

/// Id of the stand-in's only user, the owner of the configured token.
const USER_ID: u64 = 1;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v4/user", get(current_user))
        .route("/api/v4/groups/{id}", get(group))
        .route("/api/v4/groups/{id}/projects", get(group_projects))
        .route("/api/v4/projects/remote-import", post(remote_import))
        .route("/api/v4/projects/{id}", get(project).delete(delete_project))
        .route(
            "/api/v4/projects/{id}/export",
            get(export_status).post(schedule_export),
        )
        .route("/api/v4/projects/{id}/import", get(import_status))
        .route("/__standin/exports", get(export_records))
        .route("/__standin/uploads", get(upload_records))
        .route("/__standin/imports", get(import_records))
        .route("/__standin/deletions", get(deletion_records))
        .fallback(no_route)
        .with_state(shared)
}

/// An answer other than success, shaped like GitLab's.
#[derive(Debug, Clone)]
pub enum ApiError {
    /// 401 `{"message":"401 Unauthorized"}`.
    Unauthorized,
    /// 404 `{"message":"404 Group Not Found"}`.
    GroupNotFound,
    /// 404 `{"message":"404 Project Not Found"}`.
    ProjectNotFound,
    /// 404 `{"message":"404 Namespace Not Found"}` (`find_namespace!`: unknown, or not the user's to
    /// create projects in).
    NamespaceNotFound,
    /// 403 `{"message":"403 Forbidden"}`.
    Forbidden,
    /// 400 `{"message": …}`: the first error of an import GitLab's `CreateProjectService` refuses.
    ImportRefused(String),
    /// 404 `{"error":"404 Not Found"}` for paths no endpoint serves.
    NoRoute,
    /// 400 `{"error": …}`, Grape's answer to a parameter that fails validation.
    InvalidParameter(String),
    /// 400 `{"message":"The project size exceeds the export limit."}`.
    ExportTooLarge,
    /// 429 with GitLab's nested message and, unless faulted away, `Retry-After`.
    RateLimited(RateLimited),
    /// 500 `{"message":"500 Internal Server Error"}`.
    Internal,
}

impl ApiError {
    /// Grape's message for a malformed value, e.g. `page is invalid`.
    pub fn invalid(parameter: &str) -> Self {
        ApiError::InvalidParameter(format!("{parameter} is invalid"))
    }

    /// Grape's message for a value outside the allowed set, e.g. `sort does not have a valid value`.
    pub fn unsupported_value(parameter: &str) -> Self {
        ApiError::InvalidParameter(format!("{parameter} does not have a valid value"))
    }

    /// A request GitLab could not even parse.
    pub fn bad_request(message: String) -> Self {
        ApiError::InvalidParameter(message)
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::GroupNotFound
            | ApiError::ProjectNotFound
            | ApiError::NamespaceNotFound
            | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::InvalidParameter(_)
            | ApiError::ExportTooLarge
            | ApiError::ImportRefused(_) => StatusCode::BAD_REQUEST,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ApiError {
    /// The answer's body.
    fn body(&self) -> serde_json::Value {
        match self {
            ApiError::Unauthorized => json!({ "message": "401 Unauthorized" }),
            ApiError::GroupNotFound => json!({ "message": "404 Group Not Found" }),
            ApiError::ProjectNotFound => json!({ "message": "404 Project Not Found" }),
            ApiError::NamespaceNotFound => json!({ "message": "404 Namespace Not Found" }),
            ApiError::Forbidden => json!({ "message": "403 Forbidden" }),
            ApiError::ImportRefused(message) => json!({ "message": message }),
            ApiError::NoRoute => json!({ "error": "404 Not Found" }),
            ApiError::InvalidParameter(message) => json!({ "error": message }),
            ApiError::ExportTooLarge => {
                json!({ "message": "The project size exceeds the export limit." })
            }
            ApiError::RateLimited(_) => json!({ "message": {
                "error": "This endpoint has been requested too many times. Try again later."
            } }),
            ApiError::Internal => json!({ "message": "500 Internal Server Error" }),
        }
    }

    /// The answer's message as text (`message`, or its nested `error`, or Grape's `error`).
    pub fn message(&self) -> String {
        let body = self.body();
        let message = body.get("message").unwrap_or(&serde_json::Value::Null);
        let text = [message.get("error"), Some(message), body.get("error")]
            .into_iter()
            .flatten()
            .find_map(|value| value.as_str())
            .unwrap_or_default()
            .to_owned();
        text
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = self.body();
        let retry_after = match self {
            ApiError::RateLimited(RateLimited { retry_after }) => retry_after,
            _ => None,
        };
        let retry_after = retry_after.map(|seconds| (RETRY_AFTER, seconds.to_string()));
        (status, AppendHeaders(retry_after), Json(body)).into_response()
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request(rejection.body_text())
    }
}

/// Accepts the configured token as `PRIVATE-TOKEN: <token>` or `Authorization: Bearer <token>`,
/// unless it was revoked.
pub fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    if shared.token_revoked() {
        return Err(ApiError::Unauthorized);
    }
    let private_token = headers
        .get("private-token")
        .and_then(|value| value.to_str().ok());
    let bearer_token = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let token = shared.options.token.as_str();
    if private_token == Some(token) || bearer_token == Some(token) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// The prologue of the `/projects/:id` endpoints, in GitLab's order: the token (401), the `:id`
/// and then the endpoint's own `parameters` (400), the project by numeric id or (URL-encoded)
/// path (404). Answers the project and what `parameters` read.
fn authorized_project<T>(
    shared: &Shared,
    headers: &HeaderMap,
    id: Result<Path<String>, PathRejection>,
    parameters: impl FnOnce() -> Result<T, ApiError>,
) -> Result<(Project, T), ApiError> {
    authenticate(shared, headers)?;
    let Path(id) = id?;
    let parameters = parameters()?;
    let project = shared.find_project(&id).ok_or(ApiError::ProjectNotFound)?;
    Ok((project, parameters))
}

/// `GET /api/v4/user`.
async fn current_user(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&shared, &headers)?;
    Ok(Json(json!({
        "id": USER_ID,
        "username": "backup-bot",
        "name": "Backup Bot",
        "state": "active",
        "web_url": format!("{}/backup-bot", shared.public_base),
    }))
    .into_response())
}

/// `GET /api/v4/groups/:id`, by numeric id or (URL-encoded) full path.
async fn group(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&shared, &headers)?;
    let Path(id) = id?;
    let group = shared.seed.find_group(&id).ok_or(ApiError::GroupNotFound)?;
    Ok(Json(GroupJson::new(group, &shared.public_base)).into_response())
}

/// `GET /api/v4/groups/:id/projects`, paginated; see [`super::listing`].
async fn group_projects(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<ListingQuery>, QueryRejection>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (request, fails) = shared.count_listing_request();
    if fails {
        return Err(ApiError::Internal);
    }
    authenticate(&shared, &headers)?;
    let Query(query) = query?;
    let listing = query.validate(shared.options.max_per_page as usize)?;
    let Path(id) = id?;
    let group = shared.seed.find_group(&id).ok_or(ApiError::GroupNotFound)?;

    let created = shared.created_projects();
    let projects = shared.current_projects(listing.select(&shared.seed, &created, group.id));
    shared.listed(request);
    let pagination = listing.pagination(projects.len());
    let page = pagination.slice(&projects);
    let (seed, base) = (&shared.seed, shared.public_base.as_str());
    let body = if listing.simple {
        let page: Vec<_> = page
            .iter()
            .filter_map(|p| SimpleProjectJson::new(p, seed, base))
            .collect();
        Json(page).into_response()
    } else {
        let page: Vec<_> = page
            .iter()
            .filter_map(|p| ProjectJson::new(p, seed, base))
            .collect();
        Json(page).into_response()
    };
    let request_url = Url::parse(&format!("{base}{uri}")).map_err(|_| ApiError::Internal)?;
    let body = match shared.with_faults(|faults| faults.stall_listing_body_after_bytes) {
        Some(bytes) => stalled_after(body, bytes).await?,
        None => body,
    };
    Ok((AppendHeaders(pagination.headers(&request_url)), body).into_response())
}

/// `answer` with its status and headers, whose body sends its first `bytes` bytes and then
/// stalls: it never ends.
async fn stalled_after(answer: Response, bytes: usize) -> Result<Response, ApiError> {
    let (parts, body) = answer.into_parts();
    let whole = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|_| ApiError::Internal)?;
    let first = whole.slice(..bytes.min(whole.len()));
    let stalling = stream::iter([Ok::<_, std::io::Error>(first)]).chain(stream::pending());
    let mut parts = parts;
    // The length would let a client see that the body is short.
    parts.headers.remove(CONTENT_LENGTH);
    Ok(Response::from_parts(parts, Body::from_stream(stalling)))
}

/// The query of `GET /projects/:id` the stand-in understands; others are ignored.
#[derive(Debug, Default, serde::Deserialize)]
struct ProjectQuery {
    statistics: Option<String>,
}

/// `GET /api/v4/projects/:id`, by numeric id or (URL-encoded) path: the full project, with its
/// `statistics` when `statistics=true` (the token's user is a project member who may read them).
async fn project(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<ProjectQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (project, statistics) = authorized_project(&shared, &headers, id, || {
        let Query(query) = query?;
        Ok(boolean("statistics", &query.statistics)?.unwrap_or(false))
    })?;
    let json = ProjectDetailJson::new(&project, &shared.seed, &shared.public_base, statistics)
        .ok_or(ApiError::Internal)?;
    Ok(Json(json).into_response())
}

/// `GET /api/v4/projects/:id/export`.
async fn export_status(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (project, ()) = authorized_project(&shared, &headers, id, || Ok(()))?;
    if shared.with_faults(|faults| faults.export_status_5xx.contains(&project.id)) {
        return Err(ApiError::Internal);
    }
    let status = shared.export_status(project.id);
    Ok(Json(ExportStatusJson::new(&project, status)).into_response())
}

/// `POST /api/v4/projects/:id/export`: decides the answer, records the request with its answer, on
/// `202` starts the export job, and answers after `export_answer_delay` (the record, its arrival time
/// and the rate limit all count from the request's arrival, before that delay). A request chosen by
/// `Faults::hold_export` waits before all that (and is then dropped) or before its answer.
async fn schedule_export(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = SystemTime::now();
    let arrival = shared.arrive();
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    let params = ExportParams::from_request(query.as_deref(), content_type, &body);
    let raw_id = id.as_ref().map_or("", |Path(id)| id.as_str());
    let project_id = match shared.find_project(raw_id) {
        Some(project) => ProjectRef::Known(project.id),
        None => ProjectRef::Unknown(raw_id.to_owned()),
    };
    let held = |stage| HeldRecord {
        at,
        project_id: project_id.clone(),
        request: arrival.request,
        stage,
    };
    if arrival.hold == Some(HoldStage::BeforeArrival) {
        shared.hold(held(HoldStage::BeforeArrival)).await;
        let dropped = json!({ "message": "dropped by the GitLab stand-in" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(dropped)).into_response();
    }

    let answer = accept_export(&shared, &headers, &project_id, &params, arrival.request);
    let (upload_url, method) = match params {
        Ok(params) => (params.upload_url, params.upload_method),
        Err(_) => (None, None),
    };
    let status = answer
        .as_ref()
        .map_or_else(ApiError::status, |_| StatusCode::ACCEPTED);
    let held = held(HoldStage::BeforeAnswer);
    shared.record_export(ExportRecord {
        at,
        project_id,
        status: status.as_u16(),
        upload_url,
        method,
    });
    if arrival.hold == Some(HoldStage::BeforeAnswer) {
        shared.hold(held).await;
    }
    let delay = arrival
        .answer_delay
        .unwrap_or(shared.options.export_answer_delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match answer {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({ "message": "202 Accepted" })),
        )
            .into_response(),
        Err(error) => error.into_response(),
    }
}

/// Decides the answer to an export request in GitLab's order (authentication, project, parameters,
/// rate limit, size) and starts the export when it is accepted. The `export_5xx_every` fault strikes
/// first, before anything is checked or counted against the rate limit; a 429 burst
/// (`export_429_burst`) where the rate limit would.
fn accept_export(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    project_id: &ProjectRef,
    params: &Result<ExportParams, ApiError>,
    request: usize,
) -> Result<(), ApiError> {
    if shared.count_export_request() {
        return Err(ApiError::Internal);
    }
    authenticate(shared, headers)?;
    let &ProjectRef::Known(project_id) = project_id else {
        return Err(ApiError::ProjectNotFound);
    };
    let upload = match params {
        Ok(params) => params.upload()?,
        Err(error) => return Err(error.clone()),
    };
    if let Some(limited) = shared.burst_429(request, Instant::now()) {
        return Err(ApiError::RateLimited(limited));
    }
    shared
        .take_export_slot(Instant::now())
        .map_err(ApiError::RateLimited)?;
    if shared.with_faults(|faults| faults.too_large.contains(&project_id)) {
        return Err(ApiError::ExportTooLarge);
    }
    let job_shared = Arc::clone(shared);
    shared.start_export(project_id, |job| {
        export::run(job_shared, project_id, job, upload)
    });
    Ok(())
}

/// `POST /api/v4/projects/remote-import`; see [`super::import`].
async fn remote_import(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    import::remote_import(shared, headers, query, content_type, &body).await
}

/// `GET /api/v4/projects/:id/import`.
async fn import_status(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (project, ()) = authorized_project(&shared, &headers, id, || Ok(()))?;
    Ok(import::import_status(&shared, &project))
}

/// `DELETE /api/v4/projects/:id`: 202 `{"message":"202 Accepted"}` and the project is gone from
/// then on (GitLab deletes in the background, `Projects::DestroyService#async_execute`); 403 with
/// the `refuse_deletion` fault. Recorded whatever the answer.
async fn delete_project(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let at = SystemTime::now();
    let raw_id = id.as_ref().map_or("", |Path(id)| id.as_str());
    let found = shared.find_project(raw_id);
    let project_id = match &found {
        Some(project) => ProjectRef::Known(project.id),
        None => ProjectRef::Unknown(raw_id.to_owned()),
    };
    let answer = authenticate(&shared, &headers).and_then(|()| {
        let project = found.ok_or(ApiError::ProjectNotFound)?;
        if shared.with_faults(|faults| faults.refuse_deletion) {
            return Err(ApiError::Forbidden);
        }
        shared.delete_project(project.id);
        Ok(())
    });
    let status = answer
        .as_ref()
        .map_or_else(ApiError::status, |()| StatusCode::ACCEPTED);
    shared.record_deletion(DeletionRecord {
        at,
        project_id,
        status: status.as_u16(),
    });
    match answer {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({ "message": "202 Accepted" })),
        )
            .into_response(),
        Err(error) => error.into_response(),
    }
}

/// `GET /__standin/imports`: every import request so far, oldest first.
async fn import_records(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.imports()).into_response()
}

/// `GET /__standin/deletions`: every project deletion request so far, oldest first.
async fn deletion_records(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.deletions()).into_response()
}

/// `GET /__standin/exports`: every export request so far, oldest first.
async fn export_records(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.exports()).into_response()
}

/// `GET /__standin/uploads`: every upload attempt so far, oldest first.
async fn upload_records(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.uploads()).into_response()
}

async fn no_route() -> ApiError {
    ApiError::NoRoute
}
