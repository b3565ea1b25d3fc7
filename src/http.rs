//! Plain HTTP values that the core hands to the worker glue (requests to send) and gets back
//! (answers). The core never sends anything itself.

use std::fmt;

use url::Url;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// A request the glue must send. `Debug` hides header values, which may hold tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: Method,
    pub url: Url,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<String>,
}

impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(name, _)| *name).collect();
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("url", &redact_url(&self.url))
            .field("headers", &names)
            .finish_non_exhaustive()
    }
}

/// An answer the glue received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The start of the body as text, for error messages (at most [`EXCERPT_CHARS`]
    /// characters, however large the body).
    pub fn body_excerpt(&self) -> String {
        // Only the start is decoded: a 5 MB error page costs no more than a short one. Leading
        // white space is skipped first so that it does not use up the excerpt.
        let start = self
            .body
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(self.body.len());
        let body = &self.body[start..];
        let window = &body[..body.len().min(EXCERPT_CHARS * 4 + 4)];
        let text = String::from_utf8_lossy(window);
        let cut = excerpt(&text);
        if window.len() < body.len() && !cut.ends_with('…') {
            // The window ended inside the text (only possible with wide characters).
            format!("{}…", cut.trim_end_matches('\u{FFFD}'))
        } else {
            cut
        }
    }
}

/// How many characters of a peer's text an error message quotes.
pub const EXCERPT_CHARS: usize = 200;

/// `text` quoted and escaped like `{:?}`, cut to [`EXCERPT_CHARS`] characters before and
/// after escaping (control characters could otherwise make it ten times longer).
pub fn quoted(text: &str) -> String {
    excerpt(&format!("{:?}", excerpt(text)))
}

/// `text` trimmed and cut to [`EXCERPT_CHARS`] characters (with `…` when cut), so that an
/// error message never carries a whole answer.
pub fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// What came back for a request: an answer, or a failure to get one (network, timeout).
pub type HttpResult = Result<HttpResponse, String>;

/// A URL fit for logs: any `X-Amz-Signature` and `X-Amz-Security-Token` value is replaced.
pub fn redact_url(url: &Url) -> String {
    const HIDDEN: [&str; 2] = ["X-Amz-Signature", "X-Amz-Security-Token"];
    if !url
        .query_pairs()
        .any(|(name, _)| HIDDEN.contains(&name.as_ref()))
    {
        return url.to_string();
    }
    let mut redacted = url.clone();
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    redacted
        .query_pairs_mut()
        .clear()
        .extend_pairs(pairs.iter().map(|(name, value)| {
            let value = if HIDDEN.contains(&name.as_str()) {
                "REDACTED"
            } else {
                value.as_str()
            };
            (name.as_str(), value)
        }));
    redacted.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_signature_and_session_token_only() {
        let url = Url::parse(
            "http://h/b/k?X-Amz-Credential=AK%2Fx&X-Amz-Signature=deadbeef&X-Amz-Security-Token=tok",
        )
        .unwrap();
        let shown = redact_url(&url);
        assert!(!shown.contains("deadbeef") && !shown.contains("tok"));
        assert!(shown.contains("X-Amz-Signature=REDACTED"));
        assert!(shown.contains("X-Amz-Credential=AK%2Fx"));
    }

    fn body(bytes: Vec<u8>) -> HttpResponse {
        HttpResponse {
            status: 502,
            headers: Vec::new(),
            body: bytes,
        }
    }

    #[test]
    fn body_excerpts_are_short_whatever_the_body() {
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"  short  ".to_vec(),
            vec![b'a'; 5 << 20],
            "é".repeat(5000).into_bytes(),
            "😀".repeat(5000).into_bytes(),
            [vec![b' '; 10_000], b"late".to_vec()].concat(),
            [vec![b'\n'; 10], vec![0xff; 1000]].concat(),
            [b"x".to_vec(), vec![b' '; 5000], b"y".to_vec()].concat(),
        ];
        for bytes in cases {
            let shown = body(bytes.clone()).body_excerpt();
            assert!(shown.chars().count() <= EXCERPT_CHARS + 1, "{shown}");
            let full = String::from_utf8_lossy(&bytes).trim().to_owned();
            if full.chars().count() <= EXCERPT_CHARS {
                assert_eq!(shown, full);
            } else {
                assert!(shown.ends_with('…'), "{shown}");
                let kept = shown.trim_end_matches('…');
                assert!(full.starts_with(kept), "{shown}");
            }
        }
        assert_eq!(body(b"\n  <html>  \n".to_vec()).body_excerpt(), "<html>");
        assert_eq!(
            body([vec![b' '; 10_000], b"late".to_vec()].concat()).body_excerpt(),
            "late"
        );
    }
}
