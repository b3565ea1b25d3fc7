//! The simulated S3: the region probe, the worker's own header-signed PUTs (preflight probe,
//! manifest parts, summary) and HEADs of backups; GitLab's uploads land in it directly.

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
    /// Objects by bucket and path: their size and when they were written.
    objects: BTreeMap<(String, String), (u64, u64)>,
    /// The bodies of the objects the worker (or someone else) PUT, by bucket and path.
    bodies: BTreeMap<(String, String), String>,
    /// The worker's GETs: (arrival, path, status answered).
    pub(crate) gets: Vec<(u64, String, u16)>,
    /// The worker's PUTs: (arrival, path, body).
    pub(crate) puts: Vec<(u64, String, String)>,
    /// The worker's HEADs: (arrival, path, status answered).
    pub(crate) heads: Vec<(u64, String, u16)>,
    /// GitLab's uploads: (arrival, path, size).
    pub(crate) uploads: Vec<(u64, String, u64)>,
    /// The worker's requests answered 301 for a bucket in another region: (arrival, path).
    pub(crate) wrong_region: Vec<(u64, String)>,
    /// A status S3 answers the worker's PUTs with instead of 200.
    pub(crate) put_status: Option<u16>,
    /// A status S3 answers the worker's HEADs of objects with, whatever it holds (403: a key
    /// without `s3:GetObject`).
    pub(crate) head_status: Option<u16>,
}

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

    pub(crate) fn upload(&mut self, url: &Url, size: u64, at_ms: u64) {
        assert!(url.query_pairs().any(|(n, _)| n == "X-Amz-Signature"));
        if self.elsewhere(url).is_some() {
            // Refused; GitLab only mails its user about it.
            return;
        }
        let id = object_id(url);
        self.uploads.push((at_ms, id.1.clone(), size));
        self.objects.insert(id, (size, at_ms));
    }

    /// An object written at `at_ms` by someone else (another deployment with the same prefix).
    pub(crate) fn put_foreign(&mut self, url: &Url, size: u64, at_ms: u64) {
        self.objects.insert(object_id(url), (size, at_ms));
    }

    /// An object with this body, written by someone else.
    pub(crate) fn put_foreign_body(&mut self, url: &Url, body: &str, at_ms: u64) {
        self.objects
            .insert(object_id(url), (body.len() as u64, at_ms));
        self.bodies.insert(object_id(url), body.to_owned());
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
                self.objects
                    .insert(object_id(&request.url), (body.len() as u64, at_ms));
                self.bodies.insert(object_id(&request.url), body.clone());
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
            let body = self.bodies.get(&object_id(&request.url)).cloned();
            let status = match (self.head_status, &body) {
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
            let size = self.objects.get(&object_id(&request.url)).copied();
            let status = match (self.head_status, size) {
                (Some(status), _) => status,
                (None, Some(_)) => 200,
                (None, None) => 404,
            };
            let size = size.filter(|_| status == 200);
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
