//! S3: where a backup lives (bucket addressing and key layout) and presigned URLs for it,
//! signed with aws-sigv4. The signing time is an argument: on wasm32 the clock is the glue's.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
    SignatureLocation, SigningSettings, UriPathNormalizationMode,
};
use aws_sigv4::sign::v4::SigningParams;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use url::Url;

use crate::http::{excerpt, quoted, HttpRequest, HttpResponse, Method};
use crate::secret::Secret;
use crate::time::key_timestamp;

/// The longest validity SigV4 allows a presigned URL: seven days.
pub const MAX_PRESIGN_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The region assumed for a custom S3 endpoint when `AWS_REGION` is not set (R2 and most
/// S3-compatible servers accept it).
pub const DEFAULT_ENDPOINT_REGION: &str = "us-east-1";

/// SigV4's URI encoding: every byte but the unreserved `A-Z a-z 0-9 - _ . ~` is percent-encoded.
/// Each key segment is encoded once with it, and the signer takes the path as given, so the
/// URL GitLab receives is exactly the one that was signed.
const SIGV4_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The key pair (and optional session token) the worker signs with.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

/// How object URLs of a bucket are formed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addressing {
    /// `S3_ENDPOINT` is set: `<endpoint>/<bucket>/<key>` (R2, MinIO, s3s, …).
    Endpoint(Url),
    /// AWS, DNS-safe bucket name: `https://<bucket>.s3.<region>.amazonaws.com/<key>`.
    VirtualHosted,
    /// AWS, legacy name (dots, underscores, capitals): `https://s3.<region>.amazonaws.com/<bucket>/<key>`.
    PathStyle,
}

/// The bucket backups go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub name: String,
    /// `None` on AWS without `AWS_REGION`: the engine asks the bucket once and keeps the answer.
    pub region: Option<String>,
    pub addressing: Addressing,
}

/// The region S3 reports for a bucket in the `x-amz-bucket-region` header of any answer to a
/// request about it, even a refused one.
pub fn region_from_answer(answer: &crate::http::HttpResponse) -> Option<String> {
    answer
        .header("x-amz-bucket-region")
        .map(str::trim)
        .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        // It becomes a label of the bucket's host name; `xn--` would make it an IDNA label
        // that may not decode.
        .filter(|r| !is_idna_label(r))
        .map(str::to_owned)
}

/// What S3 answered a request signed for a region the bucket is not in: a `PermanentRedirect`
/// (301), or any answer whose `x-amz-bucket-region` (or an error's `<Region>`, as in
/// `AuthorizationHeaderMalformed`) names another region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrongRegion {
    /// The region S3 named, if it did.
    pub named: Option<String>,
}

/// Whether `answer`, to a request signed for `signed_for`, says the bucket is in another region.
pub fn wrong_region(answer: &crate::http::HttpResponse, signed_for: &str) -> Option<WrongRegion> {
    if (200..300).contains(&answer.status) {
        // It was taken: whatever a header says, the region was right.
        return None;
    }
    let named = region_from_answer(answer).or_else(|| {
        // S3's error bodies are short; a long body is no S3 error.
        let body = &answer.body[..answer.body.len().min(2048)];
        let body = String::from_utf8_lossy(body);
        let start = body.find("<Region>")? + "<Region>".len();
        let end = body[start..].find("</Region>")? + start;
        let region = body[start..end].trim();
        let fits = !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !is_idna_label(region);
        fits.then(|| region.to_owned())
    });
    match named {
        Some(named) if named != signed_for => Some(WrongRegion { named: Some(named) }),
        Some(_) => None,
        None if answer.status == 301 => Some(WrongRegion { named: None }),
        None => None,
    }
}

/// A region learned by asking the bucket, with the bucket it is for (`meta`'s `bucket_region`,
/// as JSON): a region learned for another endpoint or bucket is not used.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LearnedRegion {
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
}

impl LearnedRegion {
    pub fn new(bucket: &Bucket, region: &str) -> LearnedRegion {
        LearnedRegion {
            endpoint: bucket.endpoint().map(|e| e.to_string()),
            bucket: bucket.name.clone(),
            region: region.to_owned(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The region stored in `meta` if it was learned for `bucket`. A value that is not this
    /// JSON (a bare region, as kept before regions named their bucket) names no bucket, and is
    /// learned again.
    pub fn read_for(stored: Option<&str>, bucket: &Bucket) -> Option<String> {
        let learned: LearnedRegion = serde_json::from_str(stored?).ok()?;
        let endpoint = bucket.endpoint().map(|e| e.to_string());
        (learned.bucket == bucket.name && learned.endpoint == endpoint).then_some(learned.region)
    }
}

impl Bucket {
    /// `S3_ENDPOINT`, if the bucket is not on AWS.
    pub fn endpoint(&self) -> Option<&Url> {
        match &self.addressing {
            Addressing::Endpoint(endpoint) => Some(endpoint),
            Addressing::VirtualHosted | Addressing::PathStyle => None,
        }
    }

    /// Checks the bucket name and picks the addressing style. `endpoint` must end in `/`.
    ///
    /// A name has 3 to 63 characters, starts and ends with a letter or digit, has no `..` and
    /// is not an IP address. On AWS (no endpoint) it may be a legacy name with capitals or
    /// underscores (addressed path-style, like the original tool's `gitlab_projects_backup`);
    /// S3-compatible stores (R2, MinIO, …) take only lowercase letters, digits, `-` and `.`.
    pub fn new(
        name: &str,
        region: Option<String>,
        endpoint: Option<Url>,
    ) -> Result<Bucket, String> {
        let valid_chars = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !(3..=63).contains(&name.len()) || !valid_chars {
            return Err(format!(
                "{:?} is not a valid S3 bucket name (3 to 63 letters, digits, '-', '_' or '.')",
                crate::http::excerpt(name)
            ));
        }
        let bytes = name.as_bytes();
        if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
            return Err(format!(
                "{name:?} is not a valid S3 bucket name: it must start and end with a letter or digit"
            ));
        }
        if name.contains("..") {
            return Err(format!(
                "{name:?} is not a valid S3 bucket name: it must not have two dots in a row"
            ));
        }
        let parts: Vec<&str> = name.split('.').collect();
        let ip_like = parts.len() == 4
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if ip_like {
            return Err(format!(
                "{name:?} is not a valid S3 bucket name: it must not look like an IP address"
            ));
        }
        // AWS reserves these; `xn--` would also make the host name an IDNA label that may not
        // decode.
        if is_idna_label(name) || name.ends_with("-s3alias") || name.ends_with("--ol-s3") {
            return Err(format!(
                "{name:?} is not a valid S3 bucket name: it must not start with xn-- or end in -s3alias or --ol-s3"
            ));
        }
        let legacy = name.bytes().any(|b| b.is_ascii_uppercase() || b == b'_');
        if legacy && endpoint.is_some() {
            return Err(format!(
                "{name:?} is not a valid S3 bucket name: capitals and '_' are only in legacy AWS names; \
                 with S3_ENDPOINT use lowercase letters, digits, '-' and '.'"
            ));
        }
        let (addressing, region) = match endpoint {
            Some(endpoint) => (
                Addressing::Endpoint(endpoint),
                Some(region.unwrap_or_else(|| DEFAULT_ENDPOINT_REGION.to_owned())),
            ),
            None if is_dns_safe(name) => (Addressing::VirtualHosted, region),
            None => (Addressing::PathStyle, region),
        };
        Ok(Bucket {
            name: name.to_owned(),
            region,
            addressing,
        })
    }

    /// A URL to ask S3 for the bucket's region (signed for us-east-1, which every S3 region
    /// answers with `x-amz-bucket-region`).
    pub fn region_probe_url(&self) -> Url {
        self.object_url("us-east-1", "")
    }

    /// The URL of an object in `region`; `key` segments are separated by `/` and encoded once each.
    pub fn object_url(&self, region: &str, key: &str) -> Url {
        let encoded_key = key
            .split('/')
            .map(|segment| utf8_percent_encode(segment, SIGV4_UNRESERVED).to_string())
            .collect::<Vec<_>>()
            .join("/");
        let bucket = utf8_percent_encode(&self.name, SIGV4_UNRESERVED);
        let url = match &self.addressing {
            Addressing::Endpoint(endpoint) => format!("{endpoint}{bucket}/{encoded_key}"),
            Addressing::VirtualHosted => {
                format!("https://{bucket}.s3.{region}.amazonaws.com/{encoded_key}")
            }
            Addressing::PathStyle => {
                format!("https://s3.{region}.amazonaws.com/{bucket}/{encoded_key}")
            }
        };
        Url::parse(&url).expect("a checked bucket, region and encoded key form a valid URL")
    }
}

/// Whether a host name label starts with the IDNA prefix `xn--` (in any case).
pub fn is_idna_label(label: &str) -> bool {
    label
        .get(..4)
        .is_some_and(|start| start.eq_ignore_ascii_case("xn--"))
}

/// Virtual-hosted style needs a name that is a valid DNS label and holds no dot (TLS).
fn is_dns_safe(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// The key of one project's backup: `<prefix><path_with_namespace>/<run start>.tar.gz`, the
/// run's start in UTC as `%Y-%m-%d-%H-%M-%S` so every object of a run shares it.
pub fn object_key(prefix: &str, path_with_namespace: &str, run_started: SystemTime) -> String {
    format!(
        "{prefix}{path_with_namespace}/{}.tar.gz",
        key_timestamp(run_started)
    )
}

/// How many of a backup's first bytes its proof reads: gzip's two-byte magic number, and a few
/// more to name what an object that is no archive starts with.
pub const FIRST_BYTES: u64 = 8;
/// The first two bytes of every gzip stream (RFC 1952: ID1, ID2).
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// The Content-Type GitLab uploads an export archive with (`web_upload_strategy.rb`).
pub const ARCHIVE_CONTENT_TYPE: &str = "application/gzip";

/// What the answer to a backup's [`Signer::signed_first_bytes`] shows of an archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchiveStart {
    /// The whole object's size, in bytes.
    pub size: u64,
}

/// Why an object in the bucket is no backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotAnArchive {
    /// Nothing in it (S3 answers 416 for a range of an empty object).
    Empty,
    /// Its bytes do not start with [`GZIP_MAGIC`]; the first of them, as they came.
    NotGzip(Vec<u8>),
    /// Its Content-Type is not [`ARCHIVE_CONTENT_TYPE`] (`None`: it has none).
    ContentType(Option<String>),
    /// The answer tells no size: a 206 without a well-formed `Content-Range: bytes 0-N/<size>`
    /// for the bytes that came (or a 200 without a `Content-Length`); the header and its value.
    NoSize(&'static str, Option<String>),
}

impl fmt::Display for NotAnArchive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotAnArchive::Empty => write!(f, "the object in S3 is empty"),
            NotAnArchive::NotGzip(first) if first.is_empty() => {
                write!(
                    f,
                    "the object does not start like a gzip stream (no bytes came)"
                )
            }
            NotAnArchive::NotGzip(first) => {
                write!(
                    f,
                    "the object does not start like a gzip stream (first bytes"
                )?;
                for byte in first {
                    write!(f, " {byte:02x}")?;
                }
                write!(f, ")")
            }
            NotAnArchive::ContentType(Some(found)) => write!(
                f,
                "the object's Content-Type is {}, not {ARCHIVE_CONTENT_TYPE}",
                excerpt(found)
            ),
            NotAnArchive::ContentType(None) => write!(
                f,
                "the object has no Content-Type (GitLab uploads {ARCHIVE_CONTENT_TYPE})"
            ),
            NotAnArchive::NoSize(header, None) => {
                write!(f, "S3's answer to the ranged GET has no {header}")
            }
            NotAnArchive::NoSize(header, Some(value)) => write!(
                f,
                "S3's answer to the ranged GET has a malformed {header}: {}",
                quoted(value)
            ),
        }
    }
}

/// Reads the answer (200, 206 or 416) to a backup's [`Signer::signed_first_bytes`]: an
/// archive is a gzip stream GitLab uploaded as [`ARCHIVE_CONTENT_TYPE`], not empty.
pub fn read_archive_start(answer: &HttpResponse) -> Result<ArchiveStart, NotAnArchive> {
    let size = match answer.status {
        416 => return Err(NotAnArchive::Empty),
        // A server that ignores the range sends the whole object.
        200 => {
            let value = answer.header("content-length");
            value
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| NotAnArchive::NoSize("Content-Length", value.map(str::to_owned)))?
        }
        _ => {
            let value = answer.header("content-range");
            value
                .and_then(|v| content_range_size(v, answer.body.len()))
                .ok_or_else(|| NotAnArchive::NoSize("Content-Range", value.map(str::to_owned)))?
        }
    };
    if size == 0 {
        return Err(NotAnArchive::Empty);
    }
    if !answer.body.starts_with(&GZIP_MAGIC) {
        let shown = answer.body.len().min(FIRST_BYTES as usize);
        return Err(NotAnArchive::NotGzip(answer.body[..shown].to_vec()));
    }
    let content_type = answer.header("content-type");
    // The media type alone: parameters (`; charset=…`) and case do not change it.
    let media_type = content_type.map(|v| v.split(';').next().unwrap_or_default().trim());
    if !media_type.is_some_and(|t| t.eq_ignore_ascii_case(ARCHIVE_CONTENT_TYPE)) {
        return Err(NotAnArchive::ContentType(content_type.map(str::to_owned)));
    }
    Ok(ArchiveStart { size })
}

/// The whole object's size from a `Content-Range: bytes 0-<last>/<size>` that covers the
/// `body_len` bytes that came, from the first.
fn content_range_size(value: &str, body_len: usize) -> Option<u64> {
    let digits = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (range, size) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, size) = (digits(first)?, digits(last)?, digits(size)?);
    let covered = last.checked_sub(first)?.checked_add(1)?;
    (first == 0 && last < size && covered == body_len as u64).then_some(size)
}

/// Why a URL could not be presigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresignError(pub String);

impl fmt::Display for PresignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not presign the S3 URL: {}", self.0)
    }
}

/// The signing key and where it signs.
pub struct Signer<'a> {
    pub credentials: &'a Credentials,
    pub region: &'a str,
    pub now: SystemTime,
}

impl Signer<'_> {
    /// Signs `request` (method, URI and the headers already on it) and applies the signature.
    fn sign(
        &self,
        request: &mut http::Request<()>,
        body: SignableBody<'_>,
        location: SignatureLocation,
        expires_in: Option<Duration>,
    ) -> Result<(), PresignError> {
        let identity = aws_credential_types::Credentials::new(
            self.credentials.access_key_id.clone(),
            self.credentials.secret_access_key.expose().to_owned(),
            self.credentials
                .session_token
                .as_ref()
                .map(|t| t.expose().to_owned()),
            None,
            "gitlab-backup",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.signature_location = location;
        settings.expires_in = expires_in.map(|e| e.min(MAX_PRESIGN_EXPIRY));
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        if location == SignatureLocation::Headers {
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        }
        let params = SigningParams::builder()
            .identity(&identity)
            .region(self.region)
            .name("s3")
            .time(self.now)
            .settings(settings)
            .build()
            .map_err(|e| PresignError(e.to_string()))?
            .into();
        let uri = request.uri().to_string();
        let headers: Vec<(&str, &str)> = request
            .headers()
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
            .collect();
        let signable =
            SignableRequest::new(request.method().as_str(), uri, headers.into_iter(), body)
                .map_err(|e| PresignError(e.to_string()))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| PresignError(e.to_string()))?
            .into_parts();
        instructions.apply_to_request_http1x(request);
        Ok(())
    }

    /// Presigns `url` for `method` with SigV4 in the query string, signing only the `host`
    /// header (port included), valid for `expires_in`.
    pub fn presign(
        &self,
        method: Method,
        url: &Url,
        expires_in: Duration,
    ) -> Result<Url, PresignError> {
        let mut request = http_request(method, url)?;
        self.sign(
            &mut request,
            SignableBody::UnsignedPayload,
            SignatureLocation::QueryParams,
            Some(expires_in),
        )?;
        Url::parse(&request.uri().to_string()).map_err(|e| PresignError(e.to_string()))
    }

    /// A request signed in its headers, the body's SHA-256 included: for the worker's own
    /// S3 calls (HEAD of the preflight's probe, PUT of a manifest or probe).
    pub fn signed_request(
        &self,
        method: Method,
        url: &Url,
        body: Option<(String, &'static str)>,
    ) -> Result<HttpRequest, PresignError> {
        self.signed_with(method, url, body, None)
    }

    /// A `GET` of the object's first [`FIRST_BYTES`] bytes (`Range: bytes=0-…`), signed in its
    /// headers, the range included: the proof that a backup landed.
    pub fn signed_first_bytes(&self, url: &Url) -> Result<HttpRequest, PresignError> {
        let range = format!("bytes=0-{}", FIRST_BYTES - 1);
        self.signed_with(Method::Get, url, None, Some(range))
    }

    fn signed_with(
        &self,
        method: Method,
        url: &Url,
        body: Option<(String, &'static str)>,
        range: Option<String>,
    ) -> Result<HttpRequest, PresignError> {
        let mut request = http_request(method, url)?;
        if let Some(range) = range {
            let value =
                http::HeaderValue::try_from(range).map_err(|e| PresignError(e.to_string()))?;
            request.headers_mut().insert(http::header::RANGE, value);
        }
        if let Some((_, content_type)) = &body {
            request.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type),
            );
        }
        let bytes = body.as_ref().map_or(&b""[..], |(text, _)| text.as_bytes());
        self.sign(
            &mut request,
            SignableBody::Bytes(bytes),
            SignatureLocation::Headers,
            None,
        )?;
        let headers = request
            .headers()
            .iter()
            .filter(|(name, _)| *name != http::header::HOST)
            .filter_map(|(name, value)| {
                Some((header_name(name.as_str())?, value.to_str().ok()?.to_owned()))
            })
            .collect();
        Ok(HttpRequest {
            method,
            url: url.clone(),
            headers,
            body: body.map(|(text, _)| text),
        })
    }
}

fn http_request(method: Method, url: &Url) -> Result<http::Request<()>, PresignError> {
    http::Request::builder()
        .method(method.as_str())
        .uri(url.as_str())
        .body(())
        .map_err(|e| PresignError(e.to_string()))
}

/// The headers a signature may add, under the names the core's requests use.
fn header_name(name: &str) -> Option<&'static str> {
    [
        "authorization",
        "content-type",
        "range",
        "x-amz-content-sha256",
        "x-amz-date",
        "x-amz-security-token",
    ]
    .into_iter()
    .find(|known| *known == name)
}

/// Presigns `url` for `method` with SigV4 in the query string, signing only the `host` header
/// (port included), valid for `expires_in` from `now`.
pub fn presign(
    method: Method,
    url: &Url,
    credentials: &Credentials,
    region: &str,
    now: SystemTime,
    expires_in: Duration,
) -> Result<Url, PresignError> {
    Signer {
        credentials,
        region,
        now,
    }
    .presign(method, url, expires_in)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws_example_credentials() -> Credentials {
        Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            session_token: None,
        }
    }

    fn at(unix_seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix_seconds)
    }

    /// A signer with `credentials` in AWS's documented example's region and time (`us-east-1`,
    /// 2013-05-24T00:00:00Z).
    fn aws_example_signer(credentials: &Credentials) -> Signer<'_> {
        Signer {
            credentials,
            region: "us-east-1",
            now: at(1_369_353_600),
        }
    }

    /// AWS's documented example: "Authenticating Requests: Using Query Parameters (AWS
    /// Signature Version 4)", GET examplebucket/test.txt on 2013-05-24 for 86400 s.
    #[test]
    fn reproduces_aws_documented_presigned_url_example() {
        let bucket = Bucket::new("examplebucket", Some("us-east-1".into()), None).unwrap();
        let url = bucket.object_url("us-east-1", "test.txt");
        assert_eq!(
            url.as_str(),
            "https://examplebucket.s3.us-east-1.amazonaws.com/test.txt"
        );
        // The documented example signs the global endpoint's host.
        let url = Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").unwrap();
        let signed = presign(
            Method::Get,
            &url,
            &aws_example_credentials(),
            "us-east-1",
            at(1_369_353_600), // 2013-05-24T00:00:00Z
            Duration::from_secs(86400),
        )
        .unwrap();
        assert_eq!(
            signed.as_str(),
            "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
             &X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    #[test]
    fn the_method_is_part_of_the_signature() {
        let url = Url::parse("http://127.0.0.1:9000/bucket/a/b.tar.gz").unwrap();
        let sign = |method| {
            presign(
                method,
                &url,
                &aws_example_credentials(),
                "us-east-1",
                at(1),
                Duration::from_secs(60),
            )
            .unwrap()
        };
        let (get, put, head) = (sign(Method::Get), sign(Method::Put), sign(Method::Head));
        assert_ne!(get, put);
        assert_ne!(put, head);
        assert!(put
            .as_str()
            .starts_with("http://127.0.0.1:9000/bucket/a/b.tar.gz?"));
    }

    #[test]
    fn a_session_token_is_signed_into_the_url() {
        let mut credentials = aws_example_credentials();
        credentials.session_token = Some(Secret::new("FwoGZXIvYXdzE/token"));
        let url = Url::parse("https://b.s3.eu-west-1.amazonaws.com/k").unwrap();
        let signed = presign(
            Method::Put,
            &url,
            &credentials,
            "eu-west-1",
            at(1),
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(signed
            .query_pairs()
            .any(|(n, v)| n == "X-Amz-Security-Token" && v == "FwoGZXIvYXdzE/token"));
    }

    #[test]
    fn expiry_is_capped_at_seven_days() {
        let url = Url::parse("https://b.s3.eu-west-1.amazonaws.com/k").unwrap();
        let signed = presign(
            Method::Put,
            &url,
            &aws_example_credentials(),
            "eu-west-1",
            at(1),
            Duration::from_secs(30 * 24 * 3600),
        )
        .unwrap();
        assert!(signed
            .query_pairs()
            .any(|(n, v)| n == "X-Amz-Expires" && v == "604800"));
    }

    #[test]
    fn addressing_follows_endpoint_and_bucket_name() {
        let key = "team/app/2024-01-02-03-04-05.tar.gz";
        let aws = Bucket::new("my-backups", Some("eu-west-1".into()), None).unwrap();
        assert_eq!(
            aws.object_url("eu-west-1", key).as_str(),
            "https://my-backups.s3.eu-west-1.amazonaws.com/team/app/2024-01-02-03-04-05.tar.gz"
        );
        let legacy = Bucket::new("gitlab_projects_backup", Some("eu-west-1".into()), None).unwrap();
        assert_eq!(legacy.addressing, Addressing::PathStyle);
        assert_eq!(
            legacy.object_url("eu-west-1", key).as_str(),
            "https://s3.eu-west-1.amazonaws.com/gitlab_projects_backup/team/app/2024-01-02-03-04-05.tar.gz"
        );
        let dotted = Bucket::new("backups.example.com", None, None).unwrap();
        assert_eq!(dotted.addressing, Addressing::PathStyle);
        assert_eq!(dotted.region, None);
        assert_eq!(
            dotted.region_probe_url().as_str(),
            "https://s3.us-east-1.amazonaws.com/backups.example.com/"
        );
        let local = Bucket::new(
            "backups",
            None,
            Some(Url::parse("http://127.0.0.1:18016/").unwrap()),
        )
        .unwrap();
        assert_eq!(
            local.object_url("us-east-1", key).as_str(),
            "http://127.0.0.1:18016/backups/team/app/2024-01-02-03-04-05.tar.gz"
        );
    }

    #[test]
    fn key_segments_are_encoded_once_and_slashes_kept() {
        let bucket = Bucket::new("b-1", None, Some(Url::parse("http://h:1/").unwrap())).unwrap();
        assert_eq!(
            bucket
                .object_url("us-east-1", "my prefix+/a~b/c=d.tar.gz")
                .as_str(),
            "http://h:1/b-1/my%20prefix%2B/a~b/c%3Dd.tar.gz"
        );
    }

    #[test]
    fn invalid_bucket_names_are_refused() {
        for name in ["bk", "a b c", "x/y", &"a".repeat(64), "ünï"] {
            assert!(Bucket::new(name, None, None).is_err(), "{name}");
        }
    }

    #[test]
    fn bucket_names_follow_the_s3_rules_and_legacy_names_stay_on_aws() {
        let endpoint = || Some(Url::parse("http://127.0.0.1:9000/").unwrap());
        for name in [
            "-backups",
            "backups-",
            ".backups",
            "backups.",
            "back..ups",
            "192.168.5.4",
            "1.2.3.4",
            "_backups",
        ] {
            let err = Bucket::new(name, None, None).unwrap_err();
            assert!(err.contains(name), "{err}");
            assert!(Bucket::new(name, None, endpoint()).is_err(), "{name}");
        }
        for legacy in ["Backups", "gitlab_projects_backup", "a_B.c"] {
            assert_eq!(
                Bucket::new(legacy, None, None).unwrap().addressing,
                Addressing::PathStyle
            );
            assert!(Bucket::new(legacy, None, endpoint()).is_err(), "{legacy}");
        }
        for good in [
            "abc",
            "my-backups",
            "backups.example.com",
            "1.2.3.4.5",
            "123",
        ] {
            assert!(Bucket::new(good, None, endpoint()).is_ok(), "{good}");
            assert!(Bucket::new(good, None, None).is_ok(), "{good}");
        }
        let long = "x".repeat(5 << 20);
        assert!(Bucket::new(&long, None, None).unwrap_err().len() < 500);
    }

    /// Found by fuzzing (`object_key`): a region or bucket name starting with `xn--` made
    /// `object_url` panic (the host name was an IDNA label that does not decode).
    #[test]
    fn names_that_would_be_idna_labels_are_refused_and_never_reach_a_host() {
        let answer = |region: &str| crate::http::HttpResponse {
            status: 301,
            headers: vec![("x-amz-bucket-region".into(), region.into())],
            body: Vec::new(),
        };
        for region in ["xn--eu-cantral-1", "XN--abc", "xn--"] {
            assert_eq!(region_from_answer(&answer(region)), None, "{region}");
        }
        assert_eq!(
            region_from_answer(&answer("xnx-1")).as_deref(),
            Some("xnx-1")
        );
        for name in [
            "xn--abc",
            "XN--abc",
            "xn--eu-cantral-1",
            "my-s3alias",
            "a--ol-s3",
        ] {
            assert!(Bucket::new(name, None, None).is_err(), "{name}");
        }
        // What is accepted makes a URL (a name with dots goes into the path, not the host).
        for name in ["xn-abc", "axn--b", "a.xn--b"] {
            let bucket = Bucket::new(name, None, None).unwrap();
            assert!(bucket.object_url("eu-west-1", "k").as_str().contains(name));
        }
    }

    #[test]
    fn keys_carry_the_run_start_in_utc() {
        assert_eq!(
            object_key("backups/", "team/sub/app", at(1_369_353_600 + 3661)),
            "backups/team/sub/app/2013-05-24-01-01-01.tar.gz"
        );
    }

    #[test]
    fn signed_requests_carry_the_signature_and_body_hash_in_headers() {
        let credentials = aws_example_credentials();
        let signer = aws_example_signer(&credentials);
        let url = Url::parse("http://127.0.0.1:9000/bucket/a/b.tar.gz").unwrap();
        let head = signer.signed_request(Method::Head, &url, None).unwrap();
        let names: Vec<&str> = head.headers.iter().map(|(n, _)| *n).collect();
        assert!(names.contains(&"authorization") && names.contains(&"x-amz-date"));
        let empty_sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(head
            .headers
            .contains(&("x-amz-content-sha256", empty_sha256.to_owned())));
        let put = signer
            .signed_request(
                Method::Put,
                &url,
                Some(("{}".to_owned(), "application/json")),
            )
            .unwrap();
        assert!(put
            .headers
            .contains(&("content-type", "application/json".to_owned())));
        let auth = |r: &HttpRequest| {
            r.headers
                .iter()
                .find(|(n, _)| *n == "authorization")
                .unwrap()
                .1
                .clone()
        };
        assert!(
            auth(&put).contains("SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date")
        );
        assert_ne!(auth(&put), auth(&head));
        assert!(!format!("{put:?}").contains("Signature="));
    }

    #[test]
    fn the_get_of_a_backups_first_bytes_sends_and_signs_its_range() {
        let credentials = aws_example_credentials();
        let signer = aws_example_signer(&credentials);
        let url = Url::parse("http://127.0.0.1:9000/bucket/a/b.tar.gz").unwrap();
        let get = signer.signed_first_bytes(&url).unwrap();
        assert_eq!(get.method, Method::Get);
        assert!(get.headers.contains(&("range", "bytes=0-7".to_owned())));
        let auth = &get
            .headers
            .iter()
            .find(|(n, _)| *n == "authorization")
            .unwrap()
            .1;
        assert!(
            auth.contains("SignedHeaders=host;range;x-amz-content-sha256;x-amz-date"),
            "{auth}"
        );
    }

    #[test]
    fn an_answer_naming_another_region_or_redirecting_is_a_wrong_region() {
        let answer =
            |status: u16, headers: &[(&str, &str)], body: &str| crate::http::HttpResponse {
                status,
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
                body: body.as_bytes().to_vec(),
            };
        let named = |region: &str| {
            Some(WrongRegion {
                named: Some(region.into()),
            })
        };
        // A HEAD: no body, the header names the bucket's region.
        let head = answer(301, &[("x-amz-bucket-region", "eu-central-1")], "");
        assert_eq!(wrong_region(&head, "eu-west-3"), named("eu-central-1"));
        let malformed = answer(
            400,
            &[],
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AuthorizationHeaderMalformed</Code><Message>The authorization header is malformed; the region 'us-east-1' is wrong; expecting 'ap-south-1'</Message><Region>ap-south-1</Region><RequestId>0</RequestId></Error>",
        );
        assert_eq!(wrong_region(&malformed, "us-east-1"), named("ap-south-1"));
        let redirect = answer(301, &[], "<Error><Code>PermanentRedirect</Code></Error>");
        assert_eq!(
            wrong_region(&redirect, "eu-west-1"),
            Some(WrongRegion { named: None })
        );
        // The region it was signed for, or none named on another refusal: not a region matter.
        let denied = answer(
            403,
            &[("x-amz-bucket-region", "eu-west-1")],
            "<Error><Code>AccessDenied</Code></Error>",
        );
        assert_eq!(wrong_region(&denied, "eu-west-1"), None);
        assert_eq!(wrong_region(&answer(404, &[], ""), "eu-west-1"), None);
        let taken = answer(200, &[("x-amz-bucket-region", "eu-central-1")], "");
        assert_eq!(wrong_region(&taken, "eu-west-1"), None);
    }

    #[test]
    fn a_learned_region_is_used_only_for_its_endpoint_and_bucket() {
        let aws = Bucket::new("backups", None, None).unwrap();
        let kept = LearnedRegion::new(&aws, "eu-west-3").to_json();
        assert_eq!(
            LearnedRegion::read_for(Some(&kept), &aws).as_deref(),
            Some("eu-west-3")
        );
        let other = Bucket::new("archive", None, None).unwrap();
        assert_eq!(LearnedRegion::read_for(Some(&kept), &other), None);
        let endpoint = Some(Url::parse("http://127.0.0.1:9000/").unwrap());
        let elsewhere = Bucket::new("backups", None, endpoint).unwrap();
        assert_eq!(LearnedRegion::read_for(Some(&kept), &elsewhere), None);
        // As kept before regions named their bucket: learned again.
        assert_eq!(LearnedRegion::read_for(Some("eu-west-3"), &aws), None);
        assert_eq!(LearnedRegion::read_for(None, &aws), None);
    }

    #[test]
    fn the_region_is_read_from_any_answer_that_names_it() {
        let answer = |headers: &[(&str, &str)]| crate::http::HttpResponse {
            status: 403,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
        };
        assert_eq!(
            region_from_answer(&answer(&[("x-amz-bucket-region", "eu-central-1")])).as_deref(),
            Some("eu-central-1")
        );
        assert_eq!(region_from_answer(&answer(&[])), None);
        assert_eq!(
            region_from_answer(&answer(&[("x-amz-bucket-region", "a/b")])),
            None
        );
    }
}
