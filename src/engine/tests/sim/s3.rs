//! The simulated S3: the region probe, the worker's own header-signed PUTs (preflight probe,
//! manifest parts, summary), the HEAD of the probe and the ranged GETs of backups' first
//! bytes; GitLab's uploads land in it directly.

use std::collections::BTreeMap;

use url::Url;

use crate::http::{HttpRequest, HttpResponse, Method};

#[derive(Default)]
pub(crate) struct SimS3 {
    /// The region S3 names in `x-amz-bucket-region`; `None`: a server that does not say.
    pub(crate) region: Option<String>,
    /// Where buckets are, when a test says: their probe names that region, and a request signed
    /// for another is answered 301 `PermanentRedirect` naming it, as S3 does (a presigned
    /// upload then lands nowhere). A bucket that moves keeps its objects.
    pub(crate) bucket_regions: BTreeMap<String, String>,
    pub(crate) probes: Vec<(u64, Url)>,
    /// Objects by bucket and path.
    objects: BTreeMap<(String, String), Object>,
    /// The bodies of the objects the worker (or someone else) PUT, by bucket and path.
    bodies: BTreeMap<(String, String), String>,
    /// The worker's GETs: (arrival, path, status answered).
    pub(crate) gets: Vec<(u64, String, u16)>,
    /// The worker's PUTs: (arrival, path, body).
    pub(crate) puts: Vec<(u64, String, String)>,
    /// The worker's HEADs: (arrival, path, status answered).
    pub(crate) heads: Vec<(u64, String, u16)>,
    /// The worker's ranged GETs (of backups' first bytes): (arrival, path, status answered).
    pub(crate) ranged_gets: Vec<(u64, String, u16)>,
    /// What S3 answers in `Content-Range` instead of the true range: `Some(None)` leaves it
    /// out, `Some(Some(v))` sends `v` (a server that gets it wrong).
    pub(crate) content_range: Option<Option<String>>,
    /// GitLab's uploads: (arrival, path, size).
    pub(crate) uploads: Vec<(u64, String, u64)>,
    /// The worker's requests answered 301 for a bucket in another region: (arrival, path).
    pub(crate) wrong_region: Vec<(u64, String)>,
    /// A status S3 answers the worker's PUTs with instead of 200.
    pub(crate) put_status: Option<u16>,
    /// A status S3 answers the worker's HEADs and GETs of objects with, whatever it holds
    /// (403: a key without `s3:GetObject`).
    pub(crate) object_status: Option<u16>,
}

/// What S3 holds of an object: its size, when it was written, its Content-Type and its first
/// bytes (all of them for a small object).
#[derive(Clone, Debug)]
struct Object {
    size: u64,
    written_ms: u64,
    content_type: Option<String>,
    start: Vec<u8>,
}

/// What GitLab uploads: a gzip stream (its 10-byte header, RFC 1952) as `application/gzip`.
pub(crate) const GZIP_START: [u8; 10] = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0x03];
pub(crate) const GITLAB_CONTENT_TYPE: &str = "application/gzip";

/// The bucket and region of a virtual-hosted URL (`<bucket>.s3.<region>.amazonaws.com`).
pub(crate) fn bucket_and_region(url: &Url) -> (String, String) {
    let host = url.host_str().unwrap_or_default();
    let (bucket, rest) = host
        .split_once(".s3.")
        .unwrap_or_else(|| panic!("not a bucket's host: {url}"));
    let region = rest
        .strip_suffix(".amazonaws.com")
        .unwrap_or_else(|| panic!("not a bucket's host: {url}"));
    (bucket.to_owned(), region.to_owned())
}

fn object_id(url: &Url) -> (String, String) {
    (bucket_and_region(url).0, url.path().to_owned())
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
        let (_, region) = bucket_and_region(&request.url);
        assert!(
            authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDSIMULATED/")
                && authorization.contains(&format!("/{region}/s3/aws4_request")),
            "{authorization}"
        );
    }

    /// The region the bucket of `url` is in, when it is not the one `url` is for.
    fn elsewhere(&self, url: &Url) -> Option<String> {
        let (bucket, region) = bucket_and_region(url);
        self.bucket_regions
            .get(&bucket)
            .filter(|actual| **actual != region)
            .cloned()
    }

    /// S3's answer to a request sent to another region than the bucket's.
    fn redirect(bucket: &str, actual: &str, method: Method) -> HttpResponse {
        let body = if method == Method::Head {
            Vec::new()
        } else {
            format!(
                "<Error><Code>PermanentRedirect</Code><Message>The bucket you are attempting to access must be addressed using the specified endpoint.</Message><Endpoint>{bucket}.s3.{actual}.amazonaws.com</Endpoint></Error>"
            )
            .into_bytes()
        };
        HttpResponse {
            status: 301,
            headers: vec![("x-amz-bucket-region".into(), actual.to_owned())],
            body,
        }
    }

    /// GitLab's upload of an archive of `size` bytes: a gzip stream, `application/gzip`.
    pub(crate) fn upload(&mut self, url: &Url, size: u64, at_ms: u64) {
        self.upload_as(url, size, &GZIP_START, Some(GITLAB_CONTENT_TYPE), at_ms);
    }

    /// An upload of `size` bytes that start with `start`, sent with `content_type`.
    pub(crate) fn upload_as(
        &mut self,
        url: &Url,
        size: u64,
        start: &[u8],
        content_type: Option<&str>,
        at_ms: u64,
    ) {
        assert!(url.query_pairs().any(|(n, _)| n == "X-Amz-Signature"));
        if self.elsewhere(url).is_some() {
            // Refused; GitLab only mails its user about it.
            return;
        }
        let id = object_id(url);
        self.uploads.push((at_ms, id.1.clone(), size));
        let start = start[..start.len().min(size as usize)].to_vec();
        self.objects.insert(
            id,
            Object {
                size,
                written_ms: at_ms,
                content_type: content_type.map(str::to_owned),
                start,
            },
        );
    }

    /// An object written at `at_ms` by someone else (another deployment with the same prefix).
    pub(crate) fn put_foreign(&mut self, url: &Url, size: u64, at_ms: u64) {
        self.store(
            url,
            size,
            GZIP_START.to_vec(),
            Some(GITLAB_CONTENT_TYPE),
            at_ms,
        );
    }

    /// An object with this body, written by someone else.
    pub(crate) fn put_foreign_body(&mut self, url: &Url, body: &str, at_ms: u64) {
        self.store_body(url, body, Some("application/json"), at_ms);
    }

    fn store(
        &mut self,
        url: &Url,
        size: u64,
        start: Vec<u8>,
        content_type: Option<&str>,
        at_ms: u64,
    ) {
        self.objects.insert(
            object_id(url),
            Object {
                size,
                written_ms: at_ms,
                content_type: content_type.map(str::to_owned),
                start,
            },
        );
    }

    fn store_body(&mut self, url: &Url, body: &str, content_type: Option<&str>, at_ms: u64) {
        let size = body.len() as u64;
        self.store(url, size, body.as_bytes().to_vec(), content_type, at_ms);
        self.bodies.insert(object_id(url), body.to_owned());
    }

    /// S3's answer to a GET with `Range: bytes=0-<last>` (the only kind the worker sends): 206
    /// with `Content-Range` and the bytes asked for, 416 for an empty object, 404 for none.
    fn ranged_get(&mut self, request: &HttpRequest, range: &str, at_ms: u64) -> HttpResponse {
        let last: u64 = range
            .strip_prefix("bytes=0-")
            .and_then(|last| last.parse().ok())
            .unwrap_or_else(|| panic!("a range S3 would not take from the worker: {range}"));
        let object = self.objects.get(&object_id(&request.url)).cloned();
        let status = match (self.object_status, &object) {
            (Some(status), _) => status,
            (None, Some(o)) if o.size == 0 => 416,
            (None, Some(_)) => 206,
            (None, None) => 404,
        };
        self.ranged_gets
            .push((at_ms, request.url.path().to_owned(), status));
        let xml = |code: &str| {
            format!("<Error><Code>{code}</Code><Message>{code}</Message></Error>").into_bytes()
        };
        match (status, object) {
            (206, Some(o)) => {
                let last = last.min(o.size - 1);
                let body = o.start[..o.start.len().min(last as usize + 1)].to_vec();
                assert_eq!(body.len() as u64, last + 1, "the sim keeps too few bytes");
                let content_range = self
                    .content_range
                    .clone()
                    .unwrap_or_else(|| Some(format!("bytes 0-{last}/{}", o.size)));
                let mut headers = vec![
                    ("content-length".to_owned(), body.len().to_string()),
                    (
                        "last-modified".to_owned(),
                        crate::time::http_date(o.written_ms),
                    ),
                ];
                headers.extend(o.content_type.map(|t| ("content-type".to_owned(), t)));
                headers.extend(content_range.map(|v| ("content-range".to_owned(), v)));
                HttpResponse {
                    status,
                    headers,
                    body,
                }
            }
            (416, Some(o)) => HttpResponse {
                status,
                headers: vec![("content-range".into(), format!("bytes */{}", o.size))],
                body: xml("InvalidRange"),
            },
            (404, _) => HttpResponse {
                status,
                headers: vec![("content-type".into(), "application/xml".into())],
                body: xml("NoSuchKey"),
            },
            _ => HttpResponse {
                status,
                headers: vec![("content-type".into(), "application/xml".into())],
                body: xml("AccessDenied"),
            },
        }
    }

    pub(crate) fn serve(&mut self, request: &HttpRequest, at_ms: u64) -> HttpResponse {
        let presigned = request
            .url
            .query_pairs()
            .any(|(n, _)| n == "X-Amz-Signature");
        if !presigned {
            if let Some(actual) = self.elsewhere(&request.url) {
                Self::assert_header_signed(request);
                self.wrong_region
                    .push((at_ms, request.url.path().to_owned()));
                let (bucket, _) = bucket_and_region(&request.url);
                return Self::redirect(&bucket, &actual, request.method);
            }
        }
        if request.method == Method::Put {
            Self::assert_header_signed(request);
            let status = self.put_status.unwrap_or(200);
            if status == 200 {
                let body = request.body.clone().unwrap_or_default();
                let content_type = request
                    .headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                    .map(|(_, v)| v.clone());
                self.store_body(&request.url, &body, content_type.as_deref(), at_ms);
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
        if request.method == Method::Get {
            Self::assert_header_signed(request);
            let range = request
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("range"))
                .map(|(_, v)| v.clone());
            if let Some(range) = range {
                return self.ranged_get(request, &range, at_ms);
            }
            let body = self.bodies.get(&object_id(&request.url)).cloned();
            let status = match (self.object_status, &body) {
                (Some(status), _) => status,
                (None, Some(_)) => 200,
                (None, None) => 404,
            };
            self.gets
                .push((at_ms, request.url.path().to_owned(), status));
            return HttpResponse {
                status,
                headers: Vec::new(),
                body: body
                    .filter(|_| status == 200)
                    .unwrap_or_default()
                    .into_bytes(),
            };
        }
        assert_eq!(request.method, Method::Head, "{request:?}");
        if !presigned {
            Self::assert_header_signed(request);
            let object = self.objects.get(&object_id(&request.url)).cloned();
            let status = match (self.object_status, &object) {
                (Some(status), _) => status,
                (None, Some(_)) => 200,
                (None, None) => 404,
            };
            let size = object
                .filter(|_| status == 200)
                .map(|o| (o.size, o.written_ms));
            self.heads
                .push((at_ms, request.url.path().to_owned(), status));
            return HttpResponse {
                status,
                headers: size
                    .map(|(n, written)| {
                        vec![
                            ("content-length".into(), n.to_string()),
                            ("last-modified".into(), crate::time::http_date(written)),
                        ]
                    })
                    .unwrap_or_default(),
                body: Vec::new(),
            };
        }
        self.probes.push((at_ms, request.url.clone()));
        let (bucket, _) = bucket_and_region(&request.url);
        match self.bucket_regions.get(&bucket).or(self.region.as_ref()) {
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
