//! Project imports from a URL, as GitLab's `POST /projects/remote-import` does them
//! (`lib/api/project_import.rb`, `Import::GitlabProjects::CreateProjectService`, the
//! `FileAcquisitionStrategies::RemoteFile` strategy and its `RemoteFileValidator`):
//!
//! - the parameters (`url`, `path` required; `namespace`, `name`, `overwrite`) from the query
//!   string and a JSON or form body;
//! - before accepting, a `HEAD` of the URL with a 1 s timeout; unless the answer is AWS S3's
//!   (`Server: AmazonS3` with an `x-amz-request-id`), its `Content-Type` must be one of
//!   [`ALLOWED_CONTENT_TYPES`] and its `Content-Length` above 0 and at most 10 GiB;
//! - then a project is created, `scheduled`, and a job downloads the archive with `GET`, checks that
//!   it is a gzip'd tar whose `VERSION` is the export format's, and ends `finished` (or `failed`
//!   with `import_error`). The project stays, failed, when its import fails, as in GitLab.
//!
//! Refusals answer in GitLab's order: token (401), parameters (Grape's 400), the `project_import`
//! rate limit (429), the namespace (404), then the service's first error (400): path, namespace,
//! URL scheme, `HEAD` failure, content length, content type, path or name already taken.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use url::Url;

use super::api::{authenticate, ApiError};
use super::export::EXPORT_VERSION;
use super::listing::boolean;
use super::repr::{ImportStatus, ProjectImportStatusJson};
use super::state::{HeadRecord, ImportRecord, Shared, Taken};

/// `Gitlab::HTTP.head(file_url, timeout: 1.second)`.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(1);
/// `RemoteFileValidator::ALLOWED_CONTENT_TYPES`, compared exactly.
pub const ALLOWED_CONTENT_TYPES: [&str; 3] = [
    "application/gzip",
    "application/x-tar",
    "application/x-gzip",
];
/// The default `max_import_remote_file_size`: 10240 MiB.
pub const MAX_REMOTE_FILE_SIZE: u64 = 10240 * 1024 * 1024;

/// The parameters as sent, before validation. GitLab (Grape) merges the query string with a form or
/// JSON body; here the body wins where both name the same parameter. `override_params` and others
/// are accepted and ignored.
#[derive(Debug, Default, Clone)]
pub struct ImportParams {
    pub url: Option<String>,
    pub path: Option<String>,
    pub name: Option<String>,
    /// `namespace`, or the newer `namespace_id` / `namespace_path`.
    pub namespace: Option<String>,
    pub overwrite: Option<String>,
}

impl ImportParams {
    /// Reads the parameters from the query string and the body (JSON when the content type says so,
    /// form-encoded otherwise). JSON numbers and booleans count as their text.
    pub fn from_request(
        query: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Self, ApiError> {
        let mut values: BTreeMap<String, String> =
            serde_urlencoded::from_str::<Vec<(String, String)>>(query.unwrap_or_default())
                .map_err(|error| ApiError::bad_request(format!("invalid query string: {error}")))?
                .into_iter()
                .collect();
        let is_json = content_type
            .and_then(|content_type| content_type.parse::<mime::Mime>().ok())
            .is_some_and(|mime| mime.essence_str() == mime::APPLICATION_JSON.essence_str());
        if body.is_empty() {
        } else if is_json {
            let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
                .map_err(|error| ApiError::bad_request(format!("invalid JSON body: {error}")))?;
            for (key, value) in json {
                let text = match value {
                    serde_json::Value::String(text) => text,
                    serde_json::Value::Number(number) => number.to_string(),
                    serde_json::Value::Bool(flag) => flag.to_string(),
                    _ => continue,
                };
                values.insert(key, text);
            }
        } else {
            let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
                .map_err(|error| ApiError::bad_request(format!("invalid form body: {error}")))?;
            values.extend(form);
        }
        let mut take = |key: &str| values.remove(key);
        Ok(ImportParams {
            url: take("url"),
            path: take("path"),
            name: take("name"),
            namespace: take("namespace")
                .or_else(|| take("namespace_id"))
                .or_else(|| take("namespace_path")),
            overwrite: take("overwrite"),
        })
    }

    /// Grape's checks: `url` and `path` required (`url is missing, path is missing`), `overwrite`
    /// a Boolean. The overwrite flag.
    fn check(&self) -> Result<bool, ApiError> {
        let missing: Vec<String> = [("url", &self.url), ("path", &self.path)]
            .into_iter()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| format!("{name} is missing"))
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::bad_request(missing.join(", ")));
        }
        Ok(boolean("overwrite", &self.overwrite)?.unwrap_or(false))
    }
}

/// `POST /api/v4/projects/remote-import`: decides, records the request with its `HEAD` and answer,
/// and on `201` starts the import job.
pub async fn remote_import(
    shared: Arc<Shared>,
    headers: HeaderMap,
    query: Option<String>,
    content_type: Option<String>,
    body: &[u8],
) -> Response {
    let at = SystemTime::now();
    let params = ImportParams::from_request(query.as_deref(), content_type.as_deref(), body);
    let sent = params.clone().unwrap_or_default();
    let mut record = ImportRecord {
        at,
        url: sent.url.clone(),
        namespace: sent.namespace.clone(),
        path: sent.path.clone(),
        name: sent.name.clone(),
        overwrite: false,
        status: StatusCode::CREATED.as_u16(),
        message: None,
        head: None,
        project_id: None,
        import_status: None,
        import_error: None,
        archive_sha256: None,
        archive_bytes: None,
    };
    let accepted = accept(&shared, &headers, params, &mut record).await;
    match accepted {
        Ok(accepted) => {
            record.overwrite = accepted.replaced.is_some() || record.overwrite;
            record.project_id = Some(accepted.project.id);
            record.import_status = Some(ImportStatus::Scheduled);
            let index = shared.record_import(record);
            let json = ProjectImportStatusJson::new(
                &accepted.project,
                Some((ImportStatus::Scheduled, None, correlation_id(index))),
            );
            let answer = (StatusCode::CREATED, Json(json)).into_response();
            let job = run(
                Arc::clone(&shared),
                index,
                accepted.project.id,
                accepted.url,
                accepted.replaced,
            );
            shared.keep_import_task(tokio::spawn(job).abort_handle());
            answer
        }
        Err(error) => {
            record.status = error.status().as_u16();
            record.message = Some(error.message());
            shared.record_import(record);
            error.into_response()
        }
    }
}

/// An accepted import: its new project, where to download from, and the project it replaces
/// (`overwrite`) with the path the new one takes when done.
struct Accepted {
    project: super::seed::Project,
    url: Url,
    replaced: Option<(u64, String)>,
}

/// GitLab's checks in its order; the `HEAD` (sent once the request got past the rate limit and
/// the namespace lookup) is noted in `record`.
async fn accept(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    params: Result<ImportParams, ApiError>,
    record: &mut ImportRecord,
) -> Result<Accepted, ApiError> {
    authenticate(shared, headers)?;
    let params = params?;
    let overwrite = params.check()?;
    record.overwrite = overwrite;
    shared
        .take_import_slot(Instant::now())
        .map_err(ApiError::RateLimited)?;
    let group = match &params.namespace {
        Some(namespace) => Some(
            shared
                .seed
                .find_group(namespace)
                .ok_or(ApiError::NamespaceNotFound)?
                .clone(),
        ),
        // The user's own namespace: the stand-in's user has none.
        None => None,
    };
    let path = params.path.unwrap_or_default();
    let url_text = params.url.unwrap_or_default();
    if path.trim().is_empty() {
        return Err(ApiError::ImportRefused("Path can't be blank".to_owned()));
    }
    let Some(group) = group else {
        return Err(ApiError::ImportRefused(
            "Namespace can't be blank".to_owned(),
        ));
    };

    let url = Url::parse(&url_text).ok().filter(Url::has_host);
    let mut errors = Vec::new();
    match &url {
        None => errors.push("File url is blocked: URI is invalid".to_owned()),
        Some(url) if url.scheme() == "https" => {}
        Some(url) if url.scheme() == "http" && shared.options.allow_http_imports => {}
        Some(_) => errors.push("File url is blocked: Only allowed schemes are https".to_owned()),
    }
    let head = match &url {
        Some(url) if matches!(url.scheme(), "http" | "https") => Some(send_head(shared, url).await),
        _ => None,
    };
    if let Some(head) = &head {
        if let Some(error) = &head.error {
            errors.push(format!("Failed to retrive headers: {error}"));
        }
        if !is_s3(head) {
            errors.extend(validate_remote_file(head));
        }
    }
    record.head = head;
    if let Some(first) = errors.into_iter().next() {
        return Err(ApiError::ImportRefused(first));
    }
    let url = url.ok_or(ApiError::Internal)?;

    let name = params
        .name
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| path.clone());
    let suffix = temporary_suffix(&url_text, at_nanos());
    let (project, replaced) = shared
        .create_imported_project(&group, &path, &name, overwrite, &suffix)
        .map_err(|taken| {
            ApiError::ImportRefused(
                match taken {
                    Taken::Path => "Path has already been taken",
                    Taken::Name => "Name has already been taken",
                }
                .to_owned(),
            )
        })?;
    Ok(Accepted {
        project,
        url,
        replaced: replaced.map(|id| (id, path)),
    })
}

/// Sends the `HEAD` and notes what came back.
async fn send_head(shared: &Shared, url: &Url) -> HeadRecord {
    match shared.head_client.head(url.clone()).send().await {
        Ok(answer) => {
            let header = |name: &str| {
                answer
                    .headers()
                    .get(name)
                    .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            };
            HeadRecord {
                status: Some(answer.status().as_u16()),
                content_type: header("content-type"),
                content_length: header("content-length"),
                server: header("server"),
                amz_request_id: header("x-amz-request-id"),
                error: None,
            }
        }
        Err(error) => HeadRecord {
            error: Some(head_error(url, &error)),
            ..HeadRecord::default()
        },
    }
}

/// The message of the exception Ruby's `Net::HTTP` raises for such a failure (what GitLab puts
/// after "Failed to retrive headers: ").
fn head_error(url: &Url, error: &reqwest::Error) -> String {
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or_default();
    if error.is_timeout() && error.is_connect() {
        format!("Failed to open TCP connection to {host}:{port} (execution expired)")
    } else if error.is_timeout() {
        "Net::ReadTimeout with #<TCPSocket:(closed)>".to_owned()
    } else if error.is_connect() {
        format!(
            "Failed to open TCP connection to {host}:{port} (Connection refused - connect(2) for \"{host}\" port {port})"
        )
    } else {
        let mut message = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            message = format!("{message}: {cause}");
            source = cause.source();
        }
        message
    }
}

/// `RemoteFile#s3_request?`: `Server: AmazonS3` and an `x-amz-request-id`.
fn is_s3(head: &HeadRecord) -> bool {
    head.server.as_deref() == Some("AmazonS3")
        && head
            .amz_request_id
            .as_deref()
            .is_some_and(|id| !id.is_empty())
}

/// `RemoteFileValidator`: content length first, then content type.
fn validate_remote_file(head: &HeadRecord) -> Vec<String> {
    let mut errors = Vec::new();
    let length = ruby_to_i(head.content_length.as_deref().unwrap_or_default());
    if length == 0 {
        errors.push("Content length is too small (should be at least 1 Byte)".to_owned());
    } else if length > MAX_REMOTE_FILE_SIZE {
        errors.push("Content length is too big (should be at most 10 GiB)".to_owned());
    }
    let content_type = head.content_type.as_deref().unwrap_or_default();
    if !ALLOWED_CONTENT_TYPES.contains(&content_type) {
        errors.push(format!(
            "Content type '{content_type}' not allowed. (Allowed: {})",
            ALLOWED_CONTENT_TYPES.join(", ")
        ));
    }
    errors
}

/// Ruby's `String#to_i` for a length: the leading digits, 0 when there are none.
fn ruby_to_i(text: &str) -> u64 {
    let digits: String = text
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or(if digits.is_empty() { 0 } else { u64::MAX })
}

fn at_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}

/// 32 hex digits, as `SecureRandom.hex` gives GitLab for the temporary path of an overwriting
/// import.
fn temporary_suffix(url: &str, nanos: u128) -> String {
    let digest = Sha256::digest(format!("{url} {nanos}").as_bytes());
    hex::encode(&digest[..16])
}

/// The request's correlation id, as GitLab keeps it on the import.
pub fn correlation_id(index: usize) -> String {
    format!("standin-import-{index}")
}

/// The import job of one `201`; `import_step_delay` apart, it moves the status along, downloads
/// and checks the archive, and ends `finished` (replacing the overwritten project) or `failed`.
/// Stops when the project is deleted.
async fn run(
    shared: Arc<Shared>,
    index: usize,
    project_id: u64,
    url: Url,
    replaced: Option<(u64, String)>,
) {
    let step = || tokio::time::sleep(shared.options.import_step_delay);
    step().await;
    if !shared.set_import_status(index, ImportStatus::Started, None) {
        return;
    }
    let outcome = download(&shared, index, url)
        .await
        .and_then(|archive| check_archive(&archive));
    step().await;
    match outcome {
        Ok(()) => {
            if let Some((replaced, path)) = replaced {
                shared.finish_overwrite(project_id, replaced, &path);
            }
            shared.set_import_status(index, ImportStatus::Finished, None);
        }
        Err(error) => {
            shared.set_import_status(index, ImportStatus::Failed, Some(error));
        }
    }
}

/// `GET`s the archive (`CommandLineUtil#download`: any answer but 200 fails it) and notes its
/// SHA-256 and length.
async fn download(shared: &Shared, index: usize, url: Url) -> Result<Vec<u8>, String> {
    let answer = shared
        .client
        .get(url)
        .send()
        .await
        .map_err(|error| error.to_string())?;
    let status = answer.status();
    if status != StatusCode::OK {
        return Err(format!(
            "unsupported response downloading fragment {}",
            status.as_u16()
        ));
    }
    let archive = answer.bytes().await.map_err(|error| error.to_string())?;
    shared.set_import_archive(
        index,
        hex::encode(Sha256::digest(&archive)),
        archive.len() as u64,
    );
    Ok(archive.to_vec())
}

/// What GitLab's import needs of the archive: gzip (`tar -zxf`), a tar, and a `VERSION` of the
/// export format it reads (`Gitlab::ImportExport::VersionChecker`).
fn check_archive(archive: &[u8]) -> Result<(), String> {
    let decompression_failed =
        |detail: &str| format!("File compression or decompression failed. {detail}");
    if !archive.starts_with(&[0x1f, 0x8b]) {
        return Err(decompression_failed("gzip: stdin: not in gzip format"));
    }
    let not_tar = |_| decompression_failed("tar: This does not look like a tar archive");
    let mut tar = tar::Archive::new(GzDecoder::new(archive));
    let mut version = None;
    for entry in tar.entries().map_err(not_tar)? {
        let mut entry = entry.map_err(not_tar)?;
        let path = entry.path().map_err(not_tar)?.into_owned();
        if path.strip_prefix("./").unwrap_or(&path) == Path::new("VERSION") {
            let mut contents = String::new();
            entry.read_to_string(&mut contents).map_err(not_tar)?;
            version = Some(contents);
        }
    }
    let version = version.ok_or("No such file or directory @ rb_sysopen - VERSION")?;
    let version = version.lines().next().unwrap_or_default().trim();
    if version != EXPORT_VERSION {
        return Err(format!(
            "Import version mismatch: Required {EXPORT_VERSION} but was {version}"
        ));
    }
    Ok(())
}

/// `GET /api/v4/projects/:id/import`: the project's import status (`none` if never imported).
pub fn import_status(shared: &Shared, project: &super::seed::Project) -> Response {
    let import = shared.import_of(project.id);
    let json = ProjectImportStatusJson::new(
        project,
        import
            .as_ref()
            .map(|(status, error, index)| (*status, error.as_deref(), correlation_id(*index))),
    );
    Json(json).into_response()
}
