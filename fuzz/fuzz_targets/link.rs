//! Pagination: `GitLab::read_projects_page` with an arbitrary answer (status, headers, a `Link`
//! header most of the time, body), written like an HTTP response. It must never panic, must only ever follow a `next` link within
//! the configured GitLab's API (same origin, under its path, without credentials) and must keep
//! its error messages short.
#![no_main]

use gitlab_backup::secret::Secret;
use gitlab_backup::gitlab::GitLab;
use gitlab_backup::http::HttpResponse;
use libfuzzer_sys::fuzz_target;
use url::Url;

/// The GitLab instances the listing may be configured for: at the root and under a prefix.
const BASES: [&str; 3] = [
    "https://gitlab.example.com/",
    "https://example.org/gitlab/",
    "http://127.0.0.1:8080/git/lab/",
];

mod common;

fuzz_target!(|data: &[u8]| {
    // "<status> <base>" on the first line (200 and 0 when unreadable), header lines, an empty
    // line, the body.
    let written = common::http_like(data);
    let word = |i: usize| {
        written
            .first_line
            .get(i)
            .and_then(|w| w.parse::<u16>().ok())
    };
    let base = Url::parse(BASES[usize::from(word(1).unwrap_or(0)) % BASES.len()]).unwrap();
    let api = base.join("api/v4/").unwrap();
    let gitlab = GitLab::new(&base, Secret::new("glpat-fuzz"));
    let answer = HttpResponse {
        status: word(0).unwrap_or(200),
        headers: written.headers,
        body: written.body,
    };
    match gitlab.read_projects_page(&answer) {
        Ok(page) => {
            assert_eq!(answer.status, 200);
            for project in &page.projects {
                let path = &project.path_with_namespace;
                assert!(!path
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == ".."));
            }
            if let Some(next) = page.next {
                assert_eq!(next.origin(), api.origin(), "{next} leaves {api}");
                assert!(next.path().starts_with(api.path()), "{next} leaves {api}");
                assert!(next.username().is_empty() && next.password().is_none());
                assert!(matches!(next.scheme(), "http" | "https"));
                // What the glue will request is what was checked.
                assert_eq!(Url::parse(next.as_str()).as_ref(), Ok(&next));
            }
        }
        Err(err) => {
            let shown = err.to_string();
            assert!(shown.chars().count() < 1200, "{} chars", shown.len());
        }
    }
});
