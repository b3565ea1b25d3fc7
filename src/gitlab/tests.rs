use super::*;

fn gitlab(base: &str) -> GitLab {
    GitLab::new(&Url::parse(base).unwrap(), Secret::new("glpat-test"))
}

fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    HttpResponse {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn group_lists_accept_ids_and_paths_with_spaces() {
    assert_eq!(
        GroupRef::parse_list(" 42, team/sub ,/other/ ").unwrap(),
        vec![
            GroupRef::Id(42),
            GroupRef::Path("team/sub".into()),
            GroupRef::Path("other".into())
        ]
    );
}

#[test]
fn group_lists_refuse_empty_entries_and_duplicates() {
    assert!(GroupRef::parse_list("42,,12")
        .unwrap_err()
        .contains("entry 2"));
    assert!(GroupRef::parse_list("").unwrap_err().contains("empty"));
    assert!(GroupRef::parse_list("a/b, a/b")
        .unwrap_err()
        .contains("a/b is listed twice"));
}

/// Found by fuzzing (`config`): `GROUPS_TO_BACKUP=42,..` listed
/// `https://gitlab.com/api/v4/projects`, every project the token can see.
#[test]
fn group_paths_with_dot_segments_are_refused() {
    for bad in [
        "..",
        ".",
        "42,..",
        "team/..",
        "./team",
        "team/./sub",
        "../../projects",
    ] {
        let err = GroupRef::parse_list(bad).unwrap_err();
        assert!(err.contains("segment"), "{bad}: {err}");
    }
    let gl = gitlab("https://gitlab.com/");
    for ok in ["team..sub", "...", "a/.b./c"] {
        let groups = GroupRef::parse_list(ok).unwrap();
        let url = gl.first_projects_page(&groups[0], Default::default());
        assert_eq!(url.path_segments().unwrap().count(), 5, "{url}");
        assert!(url.path().starts_with("/api/v4/groups/") && url.path().ends_with("/projects"));
    }
}

#[test]
fn a_group_path_is_one_encoded_segment_and_shared_projects_are_excluded() {
    let url = gitlab("https://gitlab.example.com/")
        .first_projects_page(&GroupRef::Path("team-0/sub-0".into()), Default::default());
    assert_eq!(
        url.as_str(),
        "https://gitlab.example.com/api/v4/groups/team-0%2Fsub-0/projects?per_page=100&order_by=id&sort=asc&simple=true&with_shared=false&include_subgroups=true"
    );
}

#[test]
fn listing_options_map_to_gitlab_parameters() {
    let url = gitlab("https://gitlab.example.com/").first_projects_page(
        &GroupRef::Id(7),
        ListingOptions {
            include_subgroups: false,
            include_archived: false,
        },
    );
    let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert!(query.contains(&("include_subgroups".into(), "false".into())));
    assert!(query.contains(&("archived".into(), "false".into())));
}

#[test]
fn a_path_prefix_in_gitlab_url_is_kept() {
    let url = gitlab("https://example.org/gitlab/")
        .first_projects_page(&GroupRef::Id(7), Default::default());
    assert!(url
        .as_str()
        .starts_with("https://example.org/gitlab/api/v4/groups/7/projects?"));
}

#[test]
fn the_token_travels_in_the_private_token_header_and_is_not_debug_printed() {
    let gl = gitlab("https://gitlab.example.com/");
    let request =
        gl.projects_page_request(gl.first_projects_page(&GroupRef::Id(1), Default::default()));
    assert_eq!(
        request.headers[0],
        ("PRIVATE-TOKEN", "glpat-test".to_owned())
    );
    assert!(!format!("{request:?}").contains("glpat-test"));
}

#[test]
fn a_page_is_read_with_its_next_link() {
    let gl = gitlab("https://gitlab.example.com/");
    let page = gl
        .read_projects_page(&answer(
            200,
            &[(
                "Link",
                "<https://gitlab.example.com/api/v4/groups/1/projects?page=2&per_page=100>; rel=\"next\", <https://gitlab.example.com/api/v4/groups/1/projects?page=1&per_page=100>; rel=\"first\"",
            )],
            r#"[{"id": 5, "path_with_namespace": "a/b", "name": "b", "extra": {"x": 1},
                 "last_activity_at": "2024-08-08T13:24:13.543Z"},
                {"id": 6, "path_with_namespace": "a/c", "last_activity_at": null}]"#,
        ))
        .unwrap();
    assert_eq!(
        page.projects,
        vec![
            Project {
                id: 5,
                path_with_namespace: "a/b".into(),
                last_activity_at: Some("2024-08-08T13:24:13.543Z".into()),
            },
            Project {
                id: 6,
                path_with_namespace: "a/c".into(),
                last_activity_at: None,
            }
        ]
    );
    assert_eq!(
        page.next.unwrap().as_str(),
        "https://gitlab.example.com/api/v4/groups/1/projects?page=2&per_page=100"
    );
}

#[test]
fn the_last_page_has_no_next() {
    let gl = gitlab("https://gitlab.example.com/");
    let page = gl
        .read_projects_page(&answer(
            200,
            &[(
                "Link",
                "<https://gitlab.example.com/api/v4/groups/1/projects?page=1>; rel=\"first\"",
            )],
            "[]",
        ))
        .unwrap();
    assert_eq!(page.next, None);
    assert!(gl
        .read_projects_page(&answer(200, &[], "[]"))
        .unwrap()
        .next
        .is_none());
}

#[test]
fn a_page_carries_gitlabs_counts_when_it_gives_them() {
    let gl = gitlab("https://gitlab.example.com/");
    let counted = gl
        .read_projects_page(&answer(
            200,
            &[("X-Total", "205"), ("X-Total-Pages", " 3 ")],
            "[]",
        ))
        .unwrap();
    assert_eq!((counted.total, counted.total_pages), (Some(205), Some(3)));
    // Above 10,000 projects GitLab leaves both out; an unreadable count is no count.
    for headers in [&[][..], &[("x-total", "many"), ("x-total-pages", "")][..]] {
        let page = gl.read_projects_page(&answer(200, headers, "[]")).unwrap();
        assert_eq!((page.total, page.total_pages), (None, None), "{headers:?}");
    }
}

#[test]
fn a_next_link_to_another_host_or_outside_the_api_is_not_followed() {
    // The token goes to GITLAB_URL's origin only: a link outside the API is refused, one to
    // another origin inside it is rebuilt on GITLAB_URL (as behind a proxy), never followed.
    let gl = gitlab("https://gitlab.example.com/gitlab/");
    for link in [
        "<https://evil.example.net/api/v4/groups/1/projects?page=2>; rel=\"next\"",
        "<https://gitlab.example.com/other/api/v4/groups/1/projects?page=2>; rel=\"next\"",
        "<http://gitlab.example.com/other/api/v4/groups/1/projects?page=2>; rel=\"next\"",
        "<https://evil.example.net/gitlab/api/v4evil/groups>; rel=\"next\"",
    ] {
        let err = gl
            .read_projects_page(&answer(200, &[("Link", link)], "[]"))
            .unwrap_err();
        assert!(
            matches!(err, GitLabError::ForeignLink(_)),
            "{link}: {err:?}"
        );
    }
    for link in [
        "<http://gitlab.example.com/gitlab/api/v4/groups/1/projects?page=2>; rel=\"next\"",
        "<https://gitlab.example.com:8443/gitlab/api/v4/groups/1/projects?page=2>; rel=\"next\"",
        "<https://evil.example.net/gitlab/api/v4/groups/1/projects?page=2>; rel=\"next\"",
        "<http://127.0.0.1:9/gitlab/api/v4/groups/1/projects?page=2>; rel=\"next\"",
    ] {
        let next = gl
            .read_projects_page(&answer(200, &[("Link", link)], "[]"))
            .unwrap_or_else(|e| panic!("{link}: {e:?}"))
            .next
            .unwrap();
        let request = gl.projects_page_request(next);
        assert_eq!(
            request.url.origin(),
            Url::parse("https://gitlab.example.com/").unwrap().origin(),
            "{link}"
        );
        assert!(request.url.path().starts_with("/gitlab/api/v4/"), "{link}");
    }
}

#[test]
fn a_next_link_on_another_origin_inside_the_api_is_rebuilt_on_gitlab_url() {
    // A proxy in front of GitLab: GitLab writes its links with the address it was reached at.
    let gl = gitlab("https://gitlab.example.com/");
    for (link, next) in [
        (
            "<http://gitlab.internal/api/v4/groups/7/projects?page=2&per_page=100>; rel=\"next\"",
            "https://gitlab.example.com/api/v4/groups/7/projects?page=2&per_page=100",
        ),
        (
            "<http://gitlab.internal:8080/api/v4/groups/team%2Fsub/projects?per_page=100&page=3#top>; rel=\"next\"",
            "https://gitlab.example.com/api/v4/groups/team%2Fsub/projects?per_page=100&page=3",
        ),
        (
            "<//gitlab.internal/api/v4/groups/7/projects?page=2>; rel=\"next\"",
            "https://gitlab.example.com/api/v4/groups/7/projects?page=2",
        ),
        (
            "<https://gitlab.example.com./api/v4/groups/7/projects>; rel=\"next\"",
            "https://gitlab.example.com/api/v4/groups/7/projects",
        ),
        (
            "<https://gitlab.example.com.evil.net/api/v4/groups>; rel=\"next\"",
            "https://gitlab.example.com/api/v4/groups",
        ),
        (
            "<https://127.0.0.1/api/v4/groups/7/projects?page=2>; rel=\"next\"",
            "https://gitlab.example.com/api/v4/groups/7/projects?page=2",
        ),
        (
            "<https://gitlab.example.com/api/v4/groups?page=1>; rel=\"first\", \
             <https://evil.example.net/api/v4/groups?page=2>; rel=\"next\"",
            "https://gitlab.example.com/api/v4/groups?page=2",
        ),
    ] {
        let page = gl
            .read_projects_page(&answer(200, &[("Link", link)], "[]"))
            .unwrap_or_else(|e| panic!("{link}: {e:?}"));
        assert_eq!(page.next.as_ref().map(Url::as_str), Some(next), "{link}");
    }
    // With a path prefix, the link's path must be under it too.
    let gl = gitlab("https://gitlab.example.com/gitlab/");
    let page = gl
        .read_projects_page(&answer(
            200,
            &[(
                "Link",
                "<http://10.0.0.5/gitlab/api/v4/groups/7/projects?page=2>; rel=\"next\"",
            )],
            "[]",
        ))
        .unwrap();
    assert_eq!(
        page.next.unwrap().as_str(),
        "https://gitlab.example.com/gitlab/api/v4/groups/7/projects?page=2"
    );
    let err = gl
        .read_projects_page(&answer(
            200,
            &[(
                "Link",
                "<http://10.0.0.5/api/v4/groups/7/projects?page=2>; rel=\"next\"",
            )],
            "[]",
        ))
        .unwrap_err();
    assert!(matches!(err, GitLabError::ForeignLink(_)), "{err:?}");
}

#[test]
fn html_and_odd_json_pages_are_bad_answers_not_panics() {
    let gl = gitlab("https://gitlab.example.com/");
    for body in [
        "<html>502 Bad Gateway</html>",
        "{\"message\": \"x\"}",
        "[{\"id\": \"five\"}]",
        "[{\"id\": 5}]",
        "[{\"id\": 5, \"path_with_namespace\": \"a/b\"",
    ] {
        let err = gl.read_projects_page(&answer(200, &[], body)).unwrap_err();
        assert!(matches!(err, GitLabError::BadAnswer(_)), "{body}: {err:?}");
    }
}

#[test]
fn listing_errors_are_classified() {
    let gl = gitlab("https://gitlab.example.com/");
    let read = |status| {
        gl.read_projects_page(&answer(status, &[], "{}"))
            .unwrap_err()
    };
    assert_eq!(read(401), GitLabError::Unauthorized);
    assert_eq!(read(404), GitLabError::GroupNotVisible { status: 404 });
    assert_eq!(read(403), GitLabError::GroupNotVisible { status: 403 });
    assert!(matches!(read(503), GitLabError::Unavailable(_)));
    assert_eq!(
        read(429),
        GitLabError::RateLimited {
            retry_after: DEFAULT_RETRY_AFTER
        }
    );
}

#[test]
fn the_upload_url_survives_form_encoding() {
    let gl = gitlab("https://gitlab.example.com/");
    let upload = Url::parse(
        "http://127.0.0.1:9000/bucket/a/b.tar.gz?X-Amz-Credential=AK%2F2013&X-Amz-Signature=abc=",
    )
    .unwrap();
    let request = gl.export_request(9, &upload);
    assert_eq!(
        request.url.as_str(),
        "https://gitlab.example.com/api/v4/projects/9/export"
    );
    let body = request.body.unwrap();
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("upload[url]".to_owned(), upload.to_string()),
            ("upload[http_method]".to_owned(), "PUT".to_owned())
        ]
    );
}

#[test]
fn export_statuses_are_read_as_gitlab_documents_them() {
    let gl = gitlab("https://gitlab.example.com/");
    let read = |status, body: &str| gl.read_export_status(&answer(status, &[], body));
    let body = |s: &str| format!(r#"{{"id":1,"name":"a","export_status":"{s}"}}"#);
    assert_eq!(read(200, &body("none")), Ok(ExportStatus::None));
    for s in ["queued", "started", "regeneration_in_progress"] {
        assert_eq!(read(200, &body(s)), Ok(ExportStatus::InProgress));
    }
    assert_eq!(read(200, &body("finished")), Ok(ExportStatus::Finished));
    assert_eq!(read(200, &body("failed")), Ok(ExportStatus::Failed));
    assert!(matches!(
        read(200, &body("exploded")),
        Err(GitLabError::BadAnswer(_))
    ));
    assert!(matches!(
        read(200, "<html>"),
        Err(GitLabError::BadAnswer(_))
    ));
    assert_eq!(read(404, "{}"), Err(GitLabError::ProjectGone));
    assert!(matches!(read(502, ""), Err(GitLabError::Unavailable(_))));
    assert_eq!(
        gl.export_status_request(9).url.as_str(),
        "https://gitlab.example.com/api/v4/projects/9/export"
    );
}

#[test]
fn the_user_check_reads_the_username() {
    let gl = gitlab("https://gitlab.example.com/");
    assert_eq!(
        gl.read_user(&answer(200, &[], r#"{"id":1,"username":"backup-bot"}"#)),
        Ok("backup-bot".into())
    );
    assert_eq!(
        gl.read_user(&answer(401, &[], "{}")),
        Err(GitLabError::Unauthorized)
    );
    assert_eq!(
        gl.user_request().url.as_str(),
        "https://gitlab.example.com/api/v4/user"
    );
}

fn bytes_answer(status: u16, headers: &[(&str, &str)], body: Vec<u8>) -> HttpResponse {
    HttpResponse {
        body,
        ..answer(status, headers, "")
    }
}

/// Error messages quote at most an excerpt of an answer, never the whole of it.
fn assert_short(err: &impl fmt::Display) {
    let shown = err.to_string();
    assert!(
        shown.chars().count() < 700,
        "{} chars: {}…",
        shown.len(),
        &shown[..300]
    );
}

const HTML_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Sign in · GitLab</title></head>\
                         <body>Please sign in</body></html>";

#[test]
fn html_pages_with_status_200_are_clear_bad_answers_everywhere() {
    let gl = gitlab("https://gitlab.example.com/");
    for headers in [&[][..], &[("Content-Type", "text/html; charset=utf-8")][..]] {
        let page = answer(200, headers, HTML_PAGE);
        for err in [
            gl.read_projects_page(&page).unwrap_err(),
            gl.read_user(&page).unwrap_err(),
            gl.read_export_status(&page).unwrap_err(),
        ] {
            assert!(matches!(err, GitLabError::BadAnswer(_)), "{err:?}");
            assert!(err.to_string().contains("Sign in"), "{err}");
        }
        assert!(gl
            .read_projects_page(&page)
            .unwrap_err()
            .to_string()
            .contains("HTML"));
        // Not taken as accepted: retried later, without using up an attempt.
        for status in [200, 202] {
            match gl.read_export_answer(&answer(status, headers, HTML_PAGE)) {
                ExportAnswer::Retry(GitLabError::BadAnswer(why)) => {
                    assert!(why.contains("HTML"), "{why}")
                }
                other => panic!("{status}: {other:?}"),
            }
        }
    }
    // An HTML type with a JSON body is still HTML; a JSON 202 with no body is accepted.
    assert!(matches!(
        gl.read_export_answer(&answer(202, &[("content-type", "TEXT/HTML")], "{}")),
        ExportAnswer::Retry(_)
    ));
    assert_eq!(
        gl.read_export_answer(&answer(202, &[], "")),
        ExportAnswer::Accepted
    );
}

#[test]
fn html_pages_with_status_5xx_are_unavailable_with_a_short_excerpt() {
    let gl = gitlab("https://gitlab.example.com/");
    let huge = format!("<html>{}</html>", "502 Bad Gateway ".repeat(400_000));
    for status in [500, 502, 503, 504, 599] {
        let page = answer(status, &[("content-type", "text/html")], &huge);
        for err in [
            gl.read_projects_page(&page).unwrap_err(),
            gl.read_user(&page).unwrap_err(),
            gl.read_export_status(&page).unwrap_err(),
        ] {
            assert!(matches!(err, GitLabError::Unavailable(_)), "{err:?}");
            assert!(err.to_string().contains(&format!("{status} <html>502 Bad")));
            assert_short(&err);
        }
        match gl.read_export_answer(&page) {
            ExportAnswer::Retry(err @ GitLabError::Unavailable(_)) => assert_short(&err),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn truncated_json_is_a_bad_answer_for_every_reader() {
    let gl = gitlab("https://gitlab.example.com/");
    let page =
        r#"[{"id": 5, "path_with_namespace": "a/b"}, {"id": 6, "path_with_namespace": "a/c"}]"#;
    let user = r#"{"id": 1, "username": "backup-bot"}"#;
    let status = r#"{"id": 1, "export_status": "finished"}"#;
    type Reader<'a> = &'a dyn Fn(&HttpResponse) -> Result<(), GitLabError>;
    let readers: [(&str, Reader); 3] = [
        (page, &|a| gl.read_projects_page(a).map(|_| ())),
        (user, &|a| gl.read_user(a).map(|_| ())),
        (status, &|a| gl.read_export_status(a).map(|_| ())),
    ];
    for (full, read) in readers {
        assert_eq!(read(&answer(200, &[], full)), Ok(()), "{full}");
        for end in 0..full.len() {
            let err = read(&answer(200, &[], &full[..end])).unwrap_err();
            assert!(matches!(err, GitLabError::BadAnswer(_)), "{end}: {err:?}");
        }
    }
}

#[test]
fn huge_json_answers_are_read_or_refused_with_short_messages() {
    let gl = gitlab("https://gitlab.example.com/");
    // A 5 MB page of valid projects is read.
    let entry = |id: usize| {
        format!(
            r#"{{"id":{id},"path_with_namespace":"group-{id}/project-{id}","description":"{}"}}"#,
            "x".repeat(40)
        )
    };
    let mut big: Vec<String> = (1..=50_000).map(entry).collect();
    let body = format!("[{}]", big.join(","));
    assert!(body.len() > 5_000_000);
    let page = gl.read_projects_page(&answer(200, &[], &body)).unwrap();
    assert_eq!(page.projects.len(), 50_000);
    // One odd entry at its end spoils the page, with a short message.
    big.push(r#"{"id":"50001","path_with_namespace":"g/p"}"#.to_owned());
    let body = format!("[{}]", big.join(","));
    let err = gl.read_projects_page(&answer(200, &[], &body)).unwrap_err();
    assert!(matches!(err, GitLabError::BadAnswer(_)));
    assert_short(&err);
    // 5 MB strings where GitLab puts short ones.
    let long = "y".repeat(5 << 20);
    for body in [
        format!(r#"[{{"id":"{long}","path_with_namespace":"a/b"}}]"#),
        format!(r#"[{{"id":1,"path_with_namespace":"a/{long}/.."}}]"#),
        format!(r#"[{{"id":1,"path_with_namespace":["{long}"]}}]"#),
    ] {
        let err = gl.read_projects_page(&answer(200, &[], &body)).unwrap_err();
        assert!(matches!(err, GitLabError::BadAnswer(_)), "{err:?}");
        assert_short(&err);
    }
    let err = gl
        .read_export_status(&answer(
            200,
            &[],
            &format!(r#"{{"export_status":"{long}"}}"#),
        ))
        .unwrap_err();
    assert_short(&err);
    let err = gl
        .read_export_status(&answer(
            200,
            &[],
            &format!(r#"{{"export_status":["{long}"]}}"#),
        ))
        .unwrap_err();
    assert_short(&err);
    let err = gl
        .read_user(&answer(
            200,
            &[],
            &format!(r#"{{"username":{{"{long}":1}}}}"#),
        ))
        .unwrap_err();
    assert_short(&err);
    match gl.read_export_answer(&answer(400, &[], &format!(r#"{{"message":"{long}"}}"#))) {
        ExportAnswer::Refused(why) => assert!(why.len() < 700, "{}", why.len()),
        other => panic!("{other:?}"),
    }
    match gl.read_export_answer(&answer(
        400,
        &[],
        &format!(r#"{{"error":{{"a":"{long}"}}}}"#),
    )) {
        ExportAnswer::Refused(why) => assert!(why.len() < 700, "{}", why.len()),
        other => panic!("{other:?}"),
    }
    let err = gl.read_projects_page(&answer(418, &[], &long)).unwrap_err();
    assert_short(&err);
}

#[test]
fn missing_or_odd_project_fields_are_bad_answers() {
    let gl = gitlab("https://gitlab.example.com/");
    for body in [
        r#"[{"id": "5", "path_with_namespace": "a/b"}]"#,
        r#"[{"id": -5, "path_with_namespace": "a/b"}]"#,
        r#"[{"id": 5.5, "path_with_namespace": "a/b"}]"#,
        r#"[{"id": 1e3, "path_with_namespace": "a/b"}]"#,
        r#"[{"id": 18446744073709551616, "path_with_namespace": "a/b"}]"#,
        r#"[{"id": null, "path_with_namespace": "a/b"}]"#,
        r#"[{"id": 5, "path_with_namespace": null}]"#,
        r#"[{"id": 5, "path_with_namespace": 7}]"#,
        r#"[{"path_with_namespace": "a/b"}]"#,
        r#"[{"id": 5, "path": "b"}]"#,
        r#"[5]"#,
        r#"[null]"#,
        r#"[[]]"#,
        r#"null"#,
        r#"{}"#,
        r#""""#,
        r#""#,
        r#"[] []"#,
    ] {
        let err = gl.read_projects_page(&answer(200, &[], body)).unwrap_err();
        assert!(matches!(err, GitLabError::BadAnswer(_)), "{body}: {err:?}");
    }
    // Unknown fields and a duplicate key are GitLab's business; a duplicated id field is not.
    assert!(gl
        .read_projects_page(&answer(
            200,
            &[],
            r#"[{"id": 5, "id": 6, "path_with_namespace": "a/b"}]"#
        ))
        .is_err());
}

#[test]
fn project_paths_that_cannot_name_a_backup_are_refused_with_the_project() {
    let gl = gitlab("https://gitlab.example.com/");
    for path in [
        "",
        "/",
        "a//b",
        "/a/b",
        "a/b/",
        ".",
        "..",
        "../b",
        "a/./b",
        "a/..",
        "a/\\u0000b",
        "a\\nb",
        "a/\\u007f",
    ] {
        let body = format!(
            r#"[{{"id": 4, "path_with_namespace": "ok/one"}}, {{"id": 5, "path_with_namespace": "{path}"}}]"#
        );
        let err = gl.read_projects_page(&answer(200, &[], &body)).unwrap_err();
        let GitLabError::BadAnswer(why) = &err else {
            panic!("{path:?}: {err:?}")
        };
        assert!(
            why.contains("project 2 of the page (id 5)"),
            "{path:?}: {why}"
        );
    }
    for path in ["a/b", "ä/ö", "a.b/..c/...", "_runs/x", "a b/c%2Fd"] {
        let body = format!(r#"[{{"id": 5, "path_with_namespace": "{path}"}}]"#);
        let page = gl.read_projects_page(&answer(200, &[], &body)).unwrap();
        assert_eq!(page.projects[0].path_with_namespace, path);
    }
}

#[test]
fn non_utf8_bytes_in_paths_are_bad_answers() {
    let gl = gitlab("https://gitlab.example.com/");
    let mut body = br#"[{"id": 5, "path_with_namespace": "team/"#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe, b'x', 0xc3]);
    body.extend_from_slice(br#""}]"#);
    let err = gl
        .read_projects_page(&bytes_answer(200, &[], body.clone()))
        .unwrap_err();
    assert!(matches!(err, GitLabError::BadAnswer(_)), "{err:?}");
    assert!(err.to_string().contains("team/\u{FFFD}"), "{err}");
    let err = gl
        .read_user(&bytes_answer(200, &[], body.clone()))
        .unwrap_err();
    assert!(matches!(err, GitLabError::BadAnswer(_)), "{err:?}");
    // An excerpt cut inside a character, and a body of only invalid bytes.
    let mut wide = "é".repeat(1000).into_bytes();
    wide.push(0xff);
    for bytes in [wide, vec![0xff; 10_000], vec![b' '; 10_000], Vec::new()] {
        let err = gl
            .read_projects_page(&bytes_answer(502, &[], bytes))
            .unwrap_err();
        assert_short(&err);
    }
}

#[test]
fn a_next_link_with_credentials_or_escaping_the_api_is_not_followed() {
    let gl = gitlab("https://gitlab.example.com/gitlab/");
    for link in [
        "<https://user:pw@gitlab.example.com/gitlab/api/v4/groups/1/projects?page=2>; rel=\"next\"",
        "<https://glpat@gitlab.example.com/gitlab/api/v4/groups/1/projects?page=2>; rel=\"next\"",
        "<https://user:pw@evil.example.net/gitlab/api/v4/groups/1/projects?page=2>; rel=\"next\"",
        "<//evil.example.net/other/api/v4/groups/1/projects?page=2>; rel=\"next\"",
        "</other/api/v4/groups/1/projects?page=2>; rel=\"next\"",
        "<https://gitlab.example.com/gitlab/api/v4/../../other/api/v4/x>; rel=\"next\"",
        "<https://gitlab.example.com/gitlab/api/v4/%2e%2e/%2E%2E/x>; rel=\"next\"",
        "<https://gitlab.example.com/gitlab/api/v4evil/groups>; rel=\"next\"",
        "<https://gitlab.example.com./gitlab/api/v4evil/groups/1/projects>; rel=\"next\"",
        "<https://gitlab.example.com.evil.net/gitlab/other/groups>; rel=\"next\"",
        "<https://evil.net\\@gitlab.example.com/gitlab/api/v4/groups>; rel=\"next\"",
        "<data:text/plain,hello>; rel=\"next\"",
        "<file:///gitlab/api/v4/groups>; rel=\"next\"",
        "<ftp://gitlab.example.com/gitlab/api/v4/groups>; rel=\"next\"",
        "<https://127.0.0.1/gitlab/groups>; rel=\"next\"",
        "<https://gitlab.example.com/gitlab/api/v4/groups?page=1>; rel=\"first\", \
         <https://evil.example.net/api/v4/groups?page=2>; rel=\"next\"",
    ] {
        let err = gl
            .read_projects_page(&answer(200, &[("link", link)], "[]"))
            .unwrap_err();
        assert!(
            matches!(err, GitLabError::ForeignLink(_)),
            "{link}: {err:?}"
        );
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
}

#[test]
fn next_links_are_found_among_other_relations_and_spellings() {
    let gl = gitlab("https://gitlab.example.com/gitlab/");
    let next = "https://gitlab.example.com/gitlab/api/v4/groups/1/projects?page=2";
    for link in [
        format!("<{next}>; rel=next"),
        format!("<{next}>; REL=\"NEXT\""),
        format!("<{next}>; rel=\"prev next\""),
        format!("  <{next}> ;rel=\"next\" ; title=\"Page 2\"  "),
        format!(
            "<https://gitlab.example.com/gitlab/api/v4/groups/1/projects?page=1>; rel=\"first\", \
             <{next}>; rel=\"next\", \
             <https://gitlab.example.com/gitlab/api/v4/groups/1/projects?page=9>; rel=\"last\""
        ),
        "</gitlab/api/v4/groups/1/projects?page=2>; rel=\"next\"".to_owned(),
        "<groups/1/projects?page=2>; rel=\"next\"".to_owned(),
        format!(
            "<{}>; rel=\"next\"",
            next.replace("gitlab.example.com", "GITLAB.example.COM:443")
        ),
    ] {
        let page = gl
            .read_projects_page(&answer(200, &[("Link", &link)], "[]"))
            .unwrap_or_else(|e| panic!("{link}: {e:?}"));
        assert_eq!(page.next.as_ref().map(Url::as_str), Some(next), "{link}");
    }
    for no_next in [
        "",
        "   ",
        "<https://gitlab.example.com/gitlab/api/v4/x>; rel=\"last\"",
    ] {
        let page = gl
            .read_projects_page(&answer(200, &[("Link", no_next)], "[]"))
            .unwrap();
        assert_eq!(page.next, None, "{no_next:?}");
    }
}

#[test]
fn malformed_link_headers_are_short_bad_answers() {
    let gl = gitlab("https://gitlab.example.com/");
    let huge = format!("<https://gitlab.example.com/api/v4/{}", "p".repeat(5 << 20));
    for link in [
        "garbage",
        "https://gitlab.example.com/api/v4/groups/1/projects?page=2; rel=\"next\"",
        "<https://gitlab.example.com/api/v4/groups/1/projects?page=2",
        "<https://gitlab.example.com/api/v4/x>; rel=\"next",
        "<https://gitlab.example.com/api/v4/x>; rel=\"next\\",
        "<https://gitlab.example.com/api/v4/x> rel=\"next\"",
        "<https://gitlab.example.com/api/v4/x>; rel=\"next\" <y>",
        "<https://gitlab.example.com/api/v4/x>; rel=\"n\u{e9}xt\"",
        "<https://gitlab.example.com/api/v4/x>; title*=UTF-16''abc; rel=next",
        "<https://gitlab.example.com/api/v4/x>; title*=UTF-8''%ff; rel=next",
        "<http://[::1>; rel=\"next\"",
        "<https://gitlab.example.com:99999/api/v4/x>; rel=\"next\"",
        "<https://gitlab.example.com/api/v4/x>; rel=\"next\",",
        ",",
        &huge,
    ] {
        let err = gl
            .read_projects_page(&answer(200, &[("Link", link)], "[]"))
            .unwrap_err();
        assert!(
            matches!(err, GitLabError::BadAnswer(_)),
            "{link:.80}: {err:?}"
        );
        assert_short(&err);
    }
    // A foreign link with a 5 MB URL is refused with a short message too.
    let huge = format!(
        "<https://evil.example.net/{}>; rel=\"next\"",
        "p".repeat(5 << 20)
    );
    let err = gl
        .read_projects_page(&answer(200, &[("Link", &huge)], "[]"))
        .unwrap_err();
    assert!(matches!(err, GitLabError::ForeignLink(_)));
    assert_short(&err);
}

#[test]
fn odd_user_answers_are_bad_answers() {
    let gl = gitlab("https://gitlab.example.com/");
    for body in [
        r#"{"id": 1}"#,
        r#"{"username": null}"#,
        r#"{"username": 7}"#,
        r#"[{"username": "a"}]"#,
        r#"{"username": "a""#,
        "",
    ] {
        let err = gl.read_user(&answer(200, &[], body)).unwrap_err();
        assert!(matches!(err, GitLabError::BadAnswer(_)), "{body}: {err:?}");
    }
    assert_eq!(
        gl.read_user(&answer(
            200,
            &[],
            r#"{"id": "1", "username": "bot", "x": null}"#
        )),
        Ok("bot".into())
    );
    assert!(matches!(
        gl.read_user(&answer(
            302,
            &[("location", "https://gitlab.example.com/users/sign_in")],
            ""
        )),
        Err(GitLabError::BadAnswer(_))
    ));
}

#[test]
fn retry_after_is_capped_and_read_only_as_seconds() {
    let gl = gitlab("https://gitlab.example.com/");
    for (value, expected) in [
        ("17", Duration::from_secs(17)),
        (" 0 ", Duration::ZERO),
        ("3600", MAX_RETRY_AFTER),
        ("3601", MAX_RETRY_AFTER),
        ("18446744073709551615", MAX_RETRY_AFTER),
        ("99999999999999999999999999999", MAX_RETRY_AFTER),
        ("-1", DEFAULT_RETRY_AFTER),
        ("1.5", DEFAULT_RETRY_AFTER),
        ("", DEFAULT_RETRY_AFTER),
        ("Wed, 21 Oct 2015 07:28:00 GMT", DEFAULT_RETRY_AFTER),
    ] {
        let err = gl
            .read_projects_page(&answer(429, &[("Retry-After", value)], ""))
            .unwrap_err();
        assert_eq!(
            err,
            GitLabError::RateLimited {
                retry_after: expected
            },
            "{value:?}"
        );
    }
}

#[test]
fn odd_export_statuses_are_bad_answers() {
    let gl = gitlab("https://gitlab.example.com/");
    for body in [
        r#"{"id": 1}"#,
        r#"{"export_status": null}"#,
        r#"{"export_status": 3}"#,
        r#"{"export_status": "FINISHED"}"#,
        r#"{"export_status": ""}"#,
    ] {
        let err = gl.read_export_status(&answer(200, &[], body)).unwrap_err();
        assert!(matches!(err, GitLabError::BadAnswer(_)), "{body}: {err:?}");
        assert_ne!(err, GitLabError::ProjectGone);
    }
}

#[test]
fn export_answers_are_classified_as_the_issue_asks() {
    let gl = gitlab("https://gitlab.example.com/");
    let read = |status, headers: &[(&str, &str)], body| {
        gl.read_export_answer(&answer(status, headers, body))
    };
    assert_eq!(
        read(202, &[], r#"{"message":"202 Accepted"}"#),
        ExportAnswer::Accepted
    );
    assert_eq!(
        read(403, &[], "{}"),
        ExportAnswer::Refused("the token needs the Maintainer role on this project".into())
    );
    assert_eq!(
        read(404, &[], "{}"),
        ExportAnswer::Refused("project gone".into())
    );
    assert_eq!(
        read(
            400,
            &[],
            r#"{"message":"The project size exceeds the export limit."}"#
        ),
        ExportAnswer::Refused(
            "GitLab refused the export: The project size exceeds the export limit.".into()
        )
    );
    assert_eq!(
        read(429, &[("Retry-After", "17")], "{}"),
        ExportAnswer::Retry(GitLabError::RateLimited {
            retry_after: Duration::from_secs(17)
        })
    );
    assert_eq!(
        read(429, &[("Retry-After", "soon")], "{}"),
        ExportAnswer::Retry(GitLabError::RateLimited {
            retry_after: DEFAULT_RETRY_AFTER
        })
    );
    assert!(matches!(
        read(502, &[], "<html>"),
        ExportAnswer::Retry(GitLabError::Unavailable(_))
    ));
    assert_eq!(
        read(401, &[], "{}"),
        ExportAnswer::Retry(GitLabError::Unauthorized)
    );
}

#[test]
fn a_projects_size_is_what_its_export_carries() {
    let gl = gitlab("https://gitlab.example.com/");
    assert_eq!(
        gl.project_size_request(9).url.as_str(),
        "https://gitlab.example.com/api/v4/projects/9?statistics=true"
    );
    let body = r#"{"id":9,"statistics":{"commit_count":3,"storage_size":999,"repository_size":100,
        "wiki_size":20,"lfs_objects_size":3000,"job_artifacts_size":500,"uploads_size":4,"snippets_size":1}}"#;
    assert_eq!(gl.read_project_size(&answer(200, &[], body)), Ok(3125));
    assert_eq!(
        gl.read_project_size(&answer(404, &[], "{}")),
        Err(GitLabError::ProjectGone)
    );
    assert!(matches!(
        gl.read_project_size(&answer(200, &[], r#"{"id":9}"#)),
        Err(GitLabError::BadAnswer(_))
    ));
}

#[test]
fn a_remote_import_never_overwrites_and_carries_the_archive_url_and_target() {
    let g = gitlab("https://gitlab.example.com/");
    let archive = Url::parse("https://backup.example.workers.dev/restore/archive/3/abc").unwrap();
    let request = g.remote_import_request(&archive, "acme/tools", "cli-restored", Some("CLI & co"));
    assert_eq!(request.method, Method::Post);
    assert_eq!(
        request.url.as_str(),
        "https://gitlab.example.com/api/v4/projects/remote-import"
    );
    let form: Vec<(String, String)> =
        url::form_urlencoded::parse(request.body.as_deref().unwrap().as_bytes())
            .into_owned()
            .collect();
    let field = |name: &str| {
        form.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(field("url"), Some(archive.as_str()));
    assert_eq!(field("namespace"), Some("acme/tools"));
    assert_eq!(field("path"), Some("cli-restored"));
    assert_eq!(field("name"), Some("CLI & co"));
    assert_eq!(
        field("overwrite"),
        None,
        "a restore never replaces a project"
    );
}

#[test]
fn import_answers_read_as_accepted_refused_or_retry() {
    let g = gitlab("https://gitlab.example.com/");
    assert_eq!(
        g.read_remote_import(&answer(
            201,
            &[],
            r#"{"id": 91, "web_url": "https://gitlab.example.com/acme/x-restored", "import_status": "scheduled"}"#
        )),
        ImportAnswer::Accepted {
            project_id: 91,
            web_url: "https://gitlab.example.com/acme/x-restored".into()
        }
    );
    match g.read_remote_import(&answer(
        400,
        &[],
        r#"{"message": "Path has already been taken"}"#,
    )) {
        ImportAnswer::Refused(why) => assert!(why.contains("Path has already been taken"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        g.read_remote_import(&answer(429, &[("retry-after", "30")], "")),
        ImportAnswer::Retry(GitLabError::RateLimited { .. })
    ));
    assert!(matches!(
        g.read_remote_import(&answer(201, &[], "<html>login</html>")),
        ImportAnswer::Retry(GitLabError::BadAnswer(_))
    ));
    let failed = g
        .read_import_status(&answer(
            200,
            &[],
            r#"{"id": 91, "import_status": "failed", "import_error": "Uploaded file is invalid",
                "failed_relations": [{"relation_name": "issues", "exception_message": "boom"}]}"#,
        ))
        .unwrap();
    assert_eq!(failed.status, ImportStatus::Failed);
    let error = failed.error.unwrap();
    assert!(
        error.contains("Uploaded file is invalid") && error.contains("issues: boom"),
        "{error}"
    );
    let done = g
        .read_import_status(&answer(
            200,
            &[],
            r#"{"id": 5, "import_status": "finished", "failed_relations": []}"#,
        ))
        .unwrap();
    assert_eq!((done.status, done.error), (ImportStatus::Finished, None));
    assert!(g
        .read_import_status(&answer(
            200,
            &[],
            r#"{"id": 5, "import_status": "sideways"}"#
        ))
        .is_err());
    assert_eq!(
        g.read_import_status(&answer(404, &[], "")),
        Err(GitLabError::ProjectGone)
    );
    assert_eq!(
        g.read_delete(&answer(202, &[], r#"{"message": "202 Accepted"}"#)),
        Ok(())
    );
    assert!(matches!(
        g.read_delete(&answer(403, &[], r#"{"message": "403 Forbidden"}"#)),
        Err(ImportAnswer::Refused(_))
    ));
    assert_eq!(g.delete_project_request(91).method, Method::Delete);
}
