//! GitLab's answers: a projects page, an export status, the user, an export request's answer,
//! each with an arbitrary status, headers and body, written like an HTTP response. No reader may panic; errors stay
//! short; an HTML page is never read as a success.
#![no_main]

use gitlab_backup::secret::Secret;
use gitlab_backup::gitlab::{ExportAnswer, GitLab, GitLabError};
use gitlab_backup::http::HttpResponse;
use libfuzzer_sys::fuzz_target;
use url::Url;

enum Reader {
    ProjectsPage,
    ExportStatus,
    User,
    ExportAnswer,
}

mod common;

fn short(err: &GitLabError) {
    let shown = err.to_string();
    assert!(shown.chars().count() < 1200, "{} chars", shown.len());
}

fn is_html(answer: &HttpResponse) -> bool {
    answer.body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<')
        || answer
            .header("content-type")
            .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/html"))
}

fuzz_target!(|data: &[u8]| {
    let gitlab = GitLab::new(
        &Url::parse("https://gitlab.example.com/").unwrap(),
        Secret::new("glpat-fuzz"),
    );
    // "<reader> <status>" on the first line (reader: page, status, user or export), header
    // lines, an empty line, the body.
    let written = common::http_like(data);
    let reader = match written.first_line.first().map(String::as_str) {
        Some("page") => Reader::ProjectsPage,
        Some("status") => Reader::ExportStatus,
        Some("user") => Reader::User,
        Some("export") => Reader::ExportAnswer,
        _ => match data.first().copied().unwrap_or(0) % 4 {
            0 => Reader::ProjectsPage,
            1 => Reader::ExportStatus,
            2 => Reader::User,
            _ => Reader::ExportAnswer,
        },
    };
    let default_status = match reader {
        Reader::ExportAnswer => 202,
        _ => 200,
    };
    let status = written
        .first_line
        .get(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or(default_status);
    let answer = HttpResponse {
        status,
        headers: written.headers,
        body: written.body,
    };
    let html = is_html(&answer);
    let success_was = |status_fits: bool| {
        assert!(
            status_fits,
            "status {} was read as a success",
            answer.status
        );
        assert!(!html, "an HTML page was read as GitLab's answer");
    };
    match reader {
        Reader::ProjectsPage => match gitlab.read_projects_page(&answer) {
            Ok(_) => success_was(answer.status == 200),
            Err(e) => short(&e),
        },
        Reader::ExportStatus => match gitlab.read_export_status(&answer) {
            Ok(_) => success_was(answer.status == 200),
            Err(e) => short(&e),
        },
        Reader::User => match gitlab.read_user(&answer) {
            Ok(_) => success_was(answer.status == 200),
            Err(e) => short(&e),
        },
        Reader::ExportAnswer => match gitlab.read_export_answer(&answer) {
            ExportAnswer::Accepted => success_was((200..300).contains(&answer.status)),
            ExportAnswer::Refused(why) => {
                assert!(matches!(answer.status, 400 | 403 | 404));
                assert!(why.chars().count() < 1200);
            }
            ExportAnswer::Retry(e) => {
                if let GitLabError::RateLimited { retry_after } = &e {
                    assert_eq!(answer.status, 429);
                    assert!(*retry_after <= gitlab_backup::gitlab::MAX_RETRY_AFTER);
                }
                short(&e)
            }
        },
    }
});
