//! Project exports: the parameters of `POST /projects/:id/export` (from the query string, a form body
//! or a JSON body), and the asynchronous export job that follows a `202`: `queued` → `started` → build
//! a `.tar.gz` in memory → upload it to `upload[url]` → `finished`.
//!
//! As in GitLab, a failed upload does not fail the export (GitLab only emails the user); only a failure
//! to build the archive ends the export `failed`.

use std::io;
use std::sync::Arc;

use flate2::write::GzEncoder;
use flate2::Compression;
use http::header::CONTENT_TYPE;
use reqwest::{Method, Url};
use serde::Deserialize;

use super::api::ApiError;
use super::repr::{ExportStatus, ProjectJson};
use super::state::{JobId, Shared, UploadRecord};

/// Export format version GitLab writes into the archive's `VERSION` file (and requires of an
/// archive it imports).
pub const EXPORT_VERSION: &str = "0.2.4";

/// Upload parameters as sent, before validation. GitLab (Grape) merges the query string with a form or
/// JSON body; here the body wins where both name the same parameter. `description` and any other
/// parameter are accepted and ignored.
#[derive(Debug, Default, Deserialize)]
pub struct ExportParams {
    #[serde(default, rename = "upload[url]")]
    pub upload_url: Option<String>,
    #[serde(default, rename = "upload[http_method]")]
    pub upload_method: Option<String>,
}

/// A JSON body may nest the upload parameters (`{"upload": {"url": …}}`) or use the flat form names.
#[derive(Debug, Default, Deserialize)]
struct JsonExportParams {
    #[serde(flatten)]
    flat: ExportParams,
    #[serde(default)]
    upload: Option<JsonUpload>,
}

#[derive(Debug, Default, Deserialize)]
struct JsonUpload {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    http_method: Option<String>,
}

/// Where and how to send the finished archive.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Parsed once and sent as is: parsing keeps the existing percent-encoding.
    pub url: Url,
    pub method: Method,
}

impl ExportParams {
    /// Reads the parameters from the query string and the body (JSON when the content type says so,
    /// form-encoded otherwise).
    pub fn from_request(
        query: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Self, ApiError> {
        let from_query: ExportParams = serde_urlencoded::from_str(query.unwrap_or_default())
            .map_err(|error| ApiError::bad_request(format!("invalid query string: {error}")))?;
        let is_json = content_type
            .and_then(|content_type| content_type.parse::<mime::Mime>().ok())
            .is_some_and(|mime| mime.essence_str() == mime::APPLICATION_JSON.essence_str());
        let from_body = if body.is_empty() {
            ExportParams::default()
        } else if is_json {
            let json: JsonExportParams = serde_json::from_slice(body)
                .map_err(|error| ApiError::bad_request(format!("invalid JSON body: {error}")))?;
            let nested = json.upload.unwrap_or_default();
            ExportParams {
                upload_url: nested.url.or(json.flat.upload_url),
                upload_method: nested.http_method.or(json.flat.upload_method),
            }
        } else {
            serde_urlencoded::from_bytes(body)
                .map_err(|error| ApiError::bad_request(format!("invalid form body: {error}")))?
        };
        Ok(ExportParams {
            upload_url: from_body.upload_url.or(from_query.upload_url),
            upload_method: from_body.upload_method.or(from_query.upload_method),
        })
    }

    /// The upload to do after the export, if `upload[url]` was sent: it must be an absolute http(s)
    /// URL, and `upload[http_method]` `PUT` (the default) or `POST`.
    pub fn upload(&self) -> Result<Option<Upload>, ApiError> {
        let method = match self.upload_method.as_deref() {
            None | Some("PUT") => Method::PUT,
            Some("POST") => Method::POST,
            Some(_) => return Err(ApiError::unsupported_value("upload[http_method]")),
        };
        let Some(raw_url) = &self.upload_url else {
            return Ok(None);
        };
        match Url::parse(raw_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
                Ok(Some(Upload { url, method }))
            }
            _ => Err(ApiError::invalid("upload[url]")),
        }
    }
}

/// The export job of one `202`; `shared.options.step_delay` apart, it moves the status along, builds
/// the archive and uploads it. Stops early when a newer export of the project replaces it.
pub async fn run(shared: Arc<Shared>, project_id: u64, job: JobId, upload: Option<Upload>) {
    let step = || tokio::time::sleep(shared.options.step_delay);
    step().await;
    if !shared.set_export_status(project_id, job, ExportStatus::Started) {
        return;
    }
    step().await;
    let archive = if shared.with_faults(|faults| faults.fail_build.contains(&project_id)) {
        Err(io::Error::other("fail_build fault"))
    } else {
        build_archive(&shared, project_id)
    };
    let Ok(archive) = archive else {
        shared.set_export_status(project_id, job, ExportStatus::Failed);
        return;
    };
    if let Some(upload) = upload {
        send(&shared, project_id, upload, archive).await;
    }
    shared.set_export_status(project_id, job, ExportStatus::Finished);
}

/// A GitLab-like export archive: `VERSION` and `project.json` (the project's API representation) in a
/// gzip-compressed tar.
pub fn build_archive(shared: &Shared, project_id: u64) -> io::Result<Vec<u8>> {
    let project = shared
        .project(project_id)
        .ok_or_else(|| io::Error::other(format!("project {project_id} is gone")))?;
    let project = ProjectJson::new(&project, &shared.seed, &shared.public_base)
        .ok_or_else(|| io::Error::other(format!("project {project_id} has no group")))?;
    let project_json = serde_json::to_vec_pretty(&project)?;

    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for (path, contents) in [
        ("VERSION", EXPORT_VERSION.as_bytes()),
        ("project.json", &project_json),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, contents)?;
    }
    tar.into_inner()?.finish()
}

/// What the `upload_not_gzip` fault uploads instead of the archive.
const NOT_GZIP_BODY: &[u8] = b"<html><body>502 Bad Gateway</body></html>\n";

/// Sends the archive to the upload URL and records the attempt; with the `fail_upload` fault nothing
/// is sent and the attempt is recorded as unanswered; with `upload_not_gzip`, [`NOT_GZIP_BODY`] is.
async fn send(shared: &Shared, project_id: u64, upload: Upload, archive: Vec<u8>) {
    let archive = if shared.with_faults(|faults| faults.upload_not_gzip.contains(&project_id)) {
        NOT_GZIP_BODY.to_vec()
    } else {
        archive
    };
    let bytes = archive.len();
    let url = upload.url.to_string();
    let status = if shared.with_faults(|faults| faults.fail_upload.contains(&project_id)) {
        None
    } else {
        shared
            .client
            .request(upload.method, upload.url)
            .header(CONTENT_TYPE, "application/gzip")
            .body(archive)
            .send()
            .await
            .ok()
            .map(|response| response.status().as_u16())
    };
    shared.record_upload(UploadRecord {
        project_id,
        url,
        status,
        bytes,
    });
}
