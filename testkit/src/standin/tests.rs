//! Specification of the stand-in, exercised over HTTP on 127.0.0.1 the way the backup talks to GitLab.
//! Uploads go to a small local receiver started per test.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, Method, StatusCode};
use flate2::read::GzDecoder;
use serde_json::{json, Value};

use super::*;

const TOKEN: &str = "glpat-standin";
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default options with quick export steps.
fn quick() -> Options {
    Options {
        step_delay: Duration::from_millis(20),
        ..Options::default()
    }
}

async fn start(seed: Seed, options: Options) -> Standin {
    Standin::start(seed, options)
        .await
        .expect("stand-in starts")
}

/// An answer, read completely.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

impl Answer {
    async fn read(response: reqwest::Response) -> Answer {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            json,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|value| value.to_str().expect("ASCII header"))
    }

    /// `rel` → URL from the `Link` header.
    fn links(&self) -> BTreeMap<String, String> {
        self.header("link")
            .unwrap_or_default()
            .split(", ")
            .filter(|link| !link.is_empty())
            .map(|link| {
                let (url, rel) = link.split_once("; rel=").expect("rel");
                (
                    rel.trim_matches('"').to_owned(),
                    url.trim_matches(['<', '>']).to_owned(),
                )
            })
            .collect()
    }

    fn ids(&self) -> Vec<u64> {
        self.json
            .as_array()
            .expect("array")
            .iter()
            .map(|project| project["id"].as_u64().unwrap())
            .collect()
    }
}

/// A GET with the token, to a path on the stand-in or to an absolute URL.
async fn get(standin: &Standin, path_or_url: &str) -> Answer {
    let url = if path_or_url.starts_with("http") {
        path_or_url.to_owned()
    } else {
        format!("{}{path_or_url}", standin.base_url())
    };
    let response = reqwest::Client::new()
        .get(url)
        .header("PRIVATE-TOKEN", TOKEN)
        .send()
        .await;
    Answer::read(response.expect("request")).await
}

/// `request` with `params` as an `application/x-www-form-urlencoded` body.
fn with_form(request: reqwest::RequestBuilder, params: &[(&str, &str)]) -> reqwest::RequestBuilder {
    request
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(params).expect("form"))
}

/// `POST /api/v4/projects/<id>/export` with the token, the upload URL form-encoded.
async fn export(standin: &Standin, project: &str, upload_url: Option<&str>) -> Answer {
    let params: Vec<(&str, &str)> = upload_url
        .map(|url| ("upload[url]", url))
        .into_iter()
        .collect();
    let request = reqwest::Client::new()
        .post(format!(
            "{}/api/v4/projects/{project}/export",
            standin.base_url()
        ))
        .header("PRIVATE-TOKEN", TOKEN);
    let response = with_form(request, &params).send().await;
    Answer::read(response.expect("request")).await
}

async fn export_status(standin: &Standin, project_id: u64) -> String {
    let answer = get(standin, &format!("/api/v4/projects/{project_id}/export")).await;
    answer.json["export_status"]
        .as_str()
        .expect("export_status")
        .to_owned()
}

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
}

/// An S3 stand-in: answers 200 to anything and keeps what it got.
struct Receiver {
    base_url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        async fn keep(
            State(received): State<Arc<Mutex<Vec<Received>>>>,
            method: Method,
            OriginalUri(uri): OriginalUri,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let path_and_query = uri
                .path_and_query()
                .map(ToString::to_string)
                .unwrap_or_default();
            received.lock().unwrap().push(Received {
                method,
                path_and_query,
                headers,
                body,
            });
            StatusCode::OK
        }
        let received = Arc::default();
        let app = axum::Router::new()
            .fallback(keep)
            .with_state(Arc::clone(&received));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { base_url, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Path → contents of the files in a `.tar.gz`.
fn untar(archive: &[u8]) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut tar = tar::Archive::new(GzDecoder::new(archive));
    for entry in tar.entries().expect("tar") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").display().to_string();
        let mut contents = String::new();
        entry.read_to_string(&mut contents).expect("contents");
        files.insert(path, contents);
    }
    files
}

fn project_id(seed: &Seed, path: &str) -> u64 {
    seed.project_by_path(path).expect("project in seed").id
}

fn ids_of(projects: &[&Project]) -> HashSet<u64> {
    projects.iter().map(|project| project.id).collect()
}

// --- Seeds ---

#[test]
fn demo_seed_has_three_backed_up_groups_with_nested_subgroups_archived_and_shared_projects() {
    let seed = Seed::demo();
    let top: Vec<&str> = seed
        .top_level_groups()
        .map(|group| group.path.as_str())
        .collect();
    assert_eq!(top, ["acme", "globex", "initech", "contractors"]);
    for path in DEMO_GROUPS {
        let group = seed.group_by_path(path).unwrap();
        assert!(
            seed.groups()
                .iter()
                .any(|sub| sub.parent_id == Some(group.id)),
            "{} has a subgroup",
            group.path
        );
    }
    assert!(seed.group_by_path("acme/platform/infra").is_some());
    assert!(seed.projects().len() >= 20);
    assert!(seed.projects().iter().any(|project| project.archived));
    let shared_elsewhere = seed
        .projects()
        .iter()
        .filter(|p| p.shared_with.iter().any(|&g| g != p.group_id))
        .count();
    assert!(shared_elsewhere >= 2);
    assert_eq!(seed.own_projects("acme").len(), 10);
    let own: usize = DEMO_GROUPS
        .iter()
        .map(|path| seed.own_projects(path).len())
        .sum();
    assert_eq!(own, 21);
    assert_eq!(Seed::demo().projects(), seed.projects(), "deterministic");
}

#[test]
fn demo_seed_has_a_contractors_group_sharing_its_two_projects_into_backed_up_groups() {
    let seed = Seed::demo();
    let contractors = seed.own_projects("contractors");
    assert_eq!(contractors.len(), 2);
    assert!(!DEMO_GROUPS.contains(&"contractors"));
    let shared_into: Vec<Vec<&str>> = contractors
        .iter()
        .map(|project| {
            project
                .shared_with
                .iter()
                .map(|&g| seed.group(g).unwrap().full_path.as_str())
                .collect()
        })
        .collect();
    assert_eq!(shared_into, [vec!["acme"], vec!["globex/research"]]);
    assert_eq!(seed.projects().len(), 23);
}

#[test]
fn generated_seed_builds_ten_thousand_projects_quickly() {
    let began = Instant::now();
    let seed = Seed::generated(100, 120);
    assert!(began.elapsed() < Duration::from_secs(2));
    assert_eq!(seed.projects().len(), 12_000);
    assert_eq!(seed.top_level_groups().count(), 100);
    let team = seed.own_projects("team-7");
    assert_eq!(team.len(), 120);
    assert_eq!(seed.own_projects("team-7/sub-0").len(), 60);
    assert_eq!(team.iter().filter(|project| project.archived).count(), 12);
}

// --- Authentication and simple resources ---

#[tokio::test]
async fn requests_without_the_token_are_unauthorized() {
    let standin = start(Seed::demo(), quick()).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/v4/groups/acme/projects", standin.base_url());
    for request in [
        client.get(&url),
        client.get(&url).header("PRIVATE-TOKEN", "wrong"),
    ] {
        let answer = Answer::read(request.send().await.unwrap()).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.json, json!({ "message": "401 Unauthorized" }));
    }
    let bearer = client.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);
}

#[tokio::test]
async fn user_is_the_active_backup_bot() {
    let standin = start(Seed::demo(), quick()).await;
    let answer = get(&standin, "/api/v4/user").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["username"], "backup-bot");
    assert_eq!(answer.json["state"], "active");
    assert!(answer.json["id"].is_u64());
}

#[tokio::test]
async fn group_is_found_by_id_or_by_encoded_full_path_and_unknown_is_404() {
    let standin = start(Seed::generated(1, 2), quick()).await;
    let sub = standin
        .seed()
        .group_by_path("team-0/sub-0")
        .unwrap()
        .clone();
    for id in [
        sub.id.to_string(),
        "team-0%2Fsub-0".to_owned(),
        "TEAM-0%2Fsub-0".to_owned(),
    ] {
        let answer = get(&standin, &format!("/api/v4/groups/{id}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{id}");
        assert_eq!(answer.json["id"], sub.id);
        assert_eq!(answer.json["full_path"], "team-0/sub-0");
        assert_eq!(answer.json["path"], "sub-0");
        assert_eq!(answer.json["parent_id"], sub.parent_id.unwrap());
        assert_eq!(
            answer.json["web_url"],
            format!("{}/groups/team-0/sub-0", standin.base_url())
        );
    }
    for missing in ["999", "nobody", "team-0%2Fnothing"] {
        let answer = get(&standin, &format!("/api/v4/groups/{missing}")).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert_eq!(answer.json, json!({ "message": "404 Group Not Found" }));
    }
}

#[tokio::test]
async fn unknown_routes_are_404() {
    let standin = start(Seed::demo(), quick()).await;
    let answer = get(&standin, "/api/v4/nothing/here").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.json, json!({ "error": "404 Not Found" }));
}

// --- Listing ---

#[tokio::test]
async fn listing_pages_through_a_group_following_link_next_with_pagination_headers() {
    let standin = start(Seed::generated(2, 45), quick()).await;
    let first =
        "/api/v4/groups/team-1/projects?include_subgroups=true&per_page=20&order_by=id&sort=asc";
    let mut next = Some(format!("{}{first}", standin.base_url()));
    let mut pages = Vec::new();
    while let Some(url) = next {
        let answer = get(&standin, &url).await;
        assert_eq!(answer.status, StatusCode::OK);
        next = answer.links().get("next").cloned();
        pages.push(answer);
    }
    assert_eq!(pages.len(), 3);
    let headers = |page: &Answer| {
        [
            "x-page",
            "x-per-page",
            "x-next-page",
            "x-prev-page",
            "x-total",
            "x-total-pages",
        ]
        .map(|name| page.header(name).unwrap().to_owned())
    };
    assert_eq!(headers(&pages[0]), ["1", "20", "2", "", "45", "3"]);
    assert_eq!(headers(&pages[1]), ["2", "20", "3", "1", "45", "3"]);
    assert_eq!(headers(&pages[2]), ["3", "20", "", "2", "45", "3"]);

    let base = standin.base_url();
    let link = |page: u32| {
        format!("{base}/api/v4/groups/team-1/projects?include_subgroups=true&per_page=20&order_by=id&sort=asc&page={page}")
    };
    let links = pages[1].links();
    assert_eq!(links["prev"], link(1));
    assert_eq!(links["next"], link(3));
    assert_eq!(links["first"], link(1));
    assert_eq!(links["last"], link(3));
    assert_eq!(
        pages[0].links().keys().collect::<Vec<_>>(),
        ["first", "last", "next"]
    );
    assert_eq!(
        pages[2].links().keys().collect::<Vec<_>>(),
        ["first", "last", "prev"]
    );

    let listed: Vec<u64> = pages.iter().flat_map(Answer::ids).collect();
    let mut expected: Vec<u64> = standin
        .seed()
        .own_projects("team-1")
        .iter()
        .map(|project| project.id)
        .collect();
    expected.sort();
    assert_eq!(listed, expected, "every project once, ascending by id");
}

#[tokio::test]
async fn link_urls_are_built_on_the_public_base_and_replace_page_in_place() {
    let options = Options {
        public_base: Some("https://gitlab.example.test/".to_owned()),
        ..quick()
    };
    let standin = start(Seed::generated(1, 10), options).await;
    let answer = get(
        &standin,
        "/api/v4/groups/team-0%2Fsub-0/projects?page=2&per_page=2&simple=true",
    )
    .await;
    assert_eq!(
        answer.links()["next"],
        "https://gitlab.example.test/api/v4/groups/team-0%2Fsub-0/projects?page=3&per_page=2&simple=true"
    );
    assert_eq!(
        answer.header("link").unwrap(),
        [
            "<https://gitlab.example.test/api/v4/groups/team-0%2Fsub-0/projects?page=1&per_page=2&simple=true>; rel=\"prev\"",
            "<https://gitlab.example.test/api/v4/groups/team-0%2Fsub-0/projects?page=3&per_page=2&simple=true>; rel=\"next\"",
            "<https://gitlab.example.test/api/v4/groups/team-0%2Fsub-0/projects?page=1&per_page=2&simple=true>; rel=\"first\"",
            "<https://gitlab.example.test/api/v4/groups/team-0%2Fsub-0/projects?page=3&per_page=2&simple=true>; rel=\"last\"",
        ]
        .join(", ")
    );
}

#[tokio::test]
async fn behind_a_proxy_links_name_another_origin_whose_path_and_query_page_on_at_the_standin() {
    // GitLab reached as http://gitlab.internal by a proxy writes its links on that origin; the
    // backup asks for their path and query at its own GITLAB_URL, here the stand-in's address.
    let options = Options {
        public_base: Some("http://gitlab.internal:8080".to_owned()),
        ..quick()
    };
    let standin = start(Seed::generated(1, 5), options).await;
    let first = get(
        &standin,
        "/api/v4/groups/team-0/projects?per_page=2&order_by=id&sort=asc",
    )
    .await;
    let next = url::Url::parse(&first.links()["next"]).unwrap();
    assert_eq!(
        (next.scheme(), next.host_str(), next.port()),
        ("http", Some("gitlab.internal"), Some(8080))
    );
    let rebuilt = format!(
        "{}{}?{}",
        standin.base_url(),
        next.path(),
        next.query().unwrap()
    );
    let second = get(&standin, &rebuilt).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.header("x-page"), Some("2"));
    let (page_1, page_2) = (first.ids(), second.ids());
    assert_eq!(page_1.len(), 2);
    assert!(!page_2.is_empty());
    assert!(
        page_1.iter().max() < page_2.iter().min(),
        "{page_1:?} {page_2:?}"
    );
}

#[tokio::test]
async fn a_listing_body_can_stall_after_its_first_bytes() {
    let standin = start(Seed::generated(1, 5), quick()).await;
    let url = format!(
        "{}/api/v4/groups/team-0/projects?per_page=100",
        standin.base_url()
    );
    let client = reqwest::Client::new();
    let whole = client
        .get(&url)
        .header("PRIVATE-TOKEN", TOKEN)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(whole.len() > 10, "{whole:?}");
    standin.set_faults(Faults {
        stall_listing_body_after_bytes: Some(10),
        ..Faults::default()
    });

    // The status and headers arrive, then the first 10 bytes of the body, then nothing more.
    let mut response = tokio::time::timeout(
        Duration::from_secs(5),
        client.get(&url).header("PRIVATE-TOKEN", TOKEN).send(),
    )
    .await
    .expect("the headers arrive")
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-total"));
    let mut received = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(500), response.chunk()).await {
            Ok(Ok(Some(chunk))) => received.extend_from_slice(&chunk),
            Ok(Ok(None)) => panic!("the body ended after {received:?}"),
            Ok(Err(error)) => panic!("the body failed: {error}"),
            Err(_stalled) => break,
        }
    }
    assert_eq!(received, whole[..10]);

    // A client with a short overall timeout gets the headers, then times out on the body.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let response = impatient
        .get(&url)
        .header("PRIVATE-TOKEN", TOKEN)
        .send()
        .await
        .expect("the headers arrive in time");
    let error = response.bytes().await.unwrap_err();
    assert!(error.is_timeout(), "{error}");

    // Other endpoints are not concerned, and the fault can be lifted.
    assert_eq!(get(&standin, "/api/v4/user").await.status, StatusCode::OK);
    standin.set_faults(Faults::default());
    let listing = get(&standin, "/api/v4/groups/team-0/projects?per_page=100").await;
    assert!(!listing.ids().is_empty());
}

#[tokio::test]
async fn per_page_defaults_to_20_and_is_clamped_to_100() {
    let standin = start(Seed::generated(1, 250), quick()).await;
    let default = get(&standin, "/api/v4/groups/team-0/projects").await;
    assert_eq!(default.header("x-per-page"), Some("20"));
    assert_eq!(default.ids().len(), 20);
    let clamped = get(
        &standin,
        "/api/v4/groups/team-0/projects?include_subgroups=true&per_page=500",
    )
    .await;
    assert_eq!(clamped.header("x-per-page"), Some("100"));
    assert_eq!(clamped.header("x-total-pages"), Some("3"));
    assert_eq!(clamped.ids().len(), 100);
}

#[tokio::test]
async fn max_per_page_caps_per_page_so_a_small_group_has_several_pages() {
    let options = Options {
        max_per_page: 3,
        ..quick()
    };
    let standin = start(Seed::demo(), options).await;
    let first = "/api/v4/groups/globex/projects?include_subgroups=true&with_shared=false&per_page=100&order_by=id&sort=asc";
    let mut next = Some(format!("{}{first}", standin.base_url()));
    let mut pages = Vec::new();
    while let Some(url) = next {
        let answer = get(&standin, &url).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("x-per-page"), Some("3"));
        assert!(answer.ids().len() <= 3);
        next = answer.links().get("next").cloned();
        pages.push(answer.ids());
    }
    assert_eq!(pages.len(), 2);
    let listed: HashSet<u64> = pages.into_iter().flatten().collect();
    assert_eq!(listed, ids_of(&standin.seed().own_projects("globex")));
    let default = get(&standin, "/api/v4/groups/globex/projects").await;
    assert_eq!(default.header("x-per-page"), Some("3"), "the default too");
}

#[tokio::test]
async fn subgroup_projects_are_listed_only_with_include_subgroups() {
    let standin = start(Seed::demo(), quick()).await;
    let seed = standin.seed();
    let acme = seed.group_by_path("acme").unwrap().id;
    let direct: HashSet<u64> = seed
        .projects_owned_by(acme, false)
        .map(|project| project.id)
        .collect();
    let all = ids_of(&seed.own_projects("acme"));
    let shared = project_id(seed, "initech/intranet");

    let by_default = get(&standin, "/api/v4/groups/acme/projects?with_shared=false").await;
    assert_eq!(by_default.ids().into_iter().collect::<HashSet<_>>(), direct);
    let without = get(
        &standin,
        "/api/v4/groups/acme/projects?with_shared=false&include_subgroups=false",
    )
    .await;
    assert_eq!(without.ids().into_iter().collect::<HashSet<_>>(), direct);
    let with = get(
        &standin,
        "/api/v4/groups/acme/projects?with_shared=false&include_subgroups=true",
    )
    .await;
    assert_eq!(with.ids().into_iter().collect::<HashSet<_>>(), all);
    assert!(!all.contains(&shared));
}

#[tokio::test]
async fn shared_projects_are_listed_unless_with_shared_is_false() {
    let standin = start(Seed::demo(), quick()).await;
    let shared = project_id(standin.seed(), "initech/intranet");
    let by_default = get(
        &standin,
        "/api/v4/groups/acme/projects?include_subgroups=true",
    )
    .await;
    assert!(by_default.ids().contains(&shared));
    assert!(by_default
        .ids()
        .contains(&project_id(standin.seed(), "contractors/brand-refresh")));
    assert_eq!(by_default.header("x-total"), Some("12"));
    let with = get(
        &standin,
        "/api/v4/groups/acme/projects?include_subgroups=true&with_shared=true",
    )
    .await;
    assert!(with.ids().contains(&shared));
    let without = get(
        &standin,
        "/api/v4/groups/acme/projects?include_subgroups=true&with_shared=false",
    )
    .await;
    assert!(!without.ids().contains(&shared));
    assert_eq!(without.header("x-total"), Some("10"));
}

#[tokio::test]
async fn archived_filter_selects_only_archived_or_only_active_projects() {
    let standin = start(Seed::demo(), quick()).await;
    let list = "/api/v4/groups/acme/projects?include_subgroups=true&with_shared=false";
    let archived: HashSet<u64> = ["acme/legacy-portal", "acme/platform/infra/old-ansible"]
        .map(|path| project_id(standin.seed(), path))
        .into();

    let all = get(&standin, list).await.ids();
    assert_eq!(all.len(), 10);
    let only_archived = get(&standin, &format!("{list}&archived=true")).await;
    assert_eq!(
        only_archived.ids().into_iter().collect::<HashSet<_>>(),
        archived
    );
    assert!(only_archived
        .json
        .as_array()
        .unwrap()
        .iter()
        .all(|project| project["archived"] == true));
    let only_active = get(&standin, &format!("{list}&archived=false")).await.ids();
    assert_eq!(only_active.len(), 8);
    assert!(only_active.iter().all(|id| !archived.contains(id)));
}

#[tokio::test]
async fn boolean_parameters_accept_1_and_0_and_reject_other_values() {
    let standin = start(Seed::demo(), quick()).await;
    let list = "/api/v4/groups/acme/projects?with_shared=0";
    let one = get(&standin, &format!("{list}&include_subgroups=1")).await;
    let zero = get(&standin, &format!("{list}&include_subgroups=0")).await;
    assert_eq!(one.header("x-total"), Some("10"));
    assert_eq!(zero.header("x-total"), Some("4"));
    let bad = get(&standin, &format!("{list}&include_subgroups=maybe")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json, json!({ "error": "include_subgroups is invalid" }));
}

#[tokio::test]
async fn simple_listing_uses_the_simple_representation() {
    let standin = start(Seed::demo(), quick()).await;
    let simple = get(
        &standin,
        "/api/v4/groups/acme%2Fplatform/projects?simple=true",
    )
    .await;
    let project = &simple.json[0];
    for field in [
        "id",
        "name",
        "path",
        "path_with_namespace",
        "name_with_namespace",
        "created_at",
        "web_url",
    ] {
        assert!(!project[field].is_null(), "{field}");
    }
    assert_eq!(project["namespace"]["full_path"], "acme/platform");
    assert_eq!(project["namespace"]["kind"], "group");
    assert!(project.get("archived").is_none());
    let full = get(&standin, "/api/v4/groups/acme%2Fplatform/projects").await;
    assert_eq!(full.json[0]["archived"], false);
    assert_eq!(full.json[0]["visibility"], "private");
}

#[tokio::test]
async fn listing_sorts_by_id_descending_by_default_and_ascending_on_request() {
    let standin = start(Seed::demo(), quick()).await;
    let descending = get(&standin, "/api/v4/groups/acme/projects").await.ids();
    assert!(descending.windows(2).all(|pair| pair[0] > pair[1]));
    let ascending = get(
        &standin,
        "/api/v4/groups/acme/projects?order_by=id&sort=asc",
    )
    .await
    .ids();
    assert!(ascending.windows(2).all(|pair| pair[0] < pair[1]));
    let bad = get(&standin, "/api/v4/groups/acme/projects?sort=sideways").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        bad.json,
        json!({ "error": "sort does not have a valid value" })
    );
}

#[tokio::test]
async fn listing_of_more_than_10000_projects_omits_totals_and_the_last_link() {
    let standin = start(Seed::generated(1, 10_010), quick()).await;
    let list = "/api/v4/groups/team-0/projects?include_subgroups=true&per_page=100";
    let answer = get(&standin, list).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.ids().len(), 100);
    assert_eq!(answer.header("x-total"), None);
    assert_eq!(answer.header("x-total-pages"), None);
    assert_eq!(answer.header("x-next-page"), Some("2"));
    assert_eq!(answer.links().keys().collect::<Vec<_>>(), ["first", "next"]);
    let last = get(&standin, &format!("{list}&page=101")).await;
    assert_eq!(last.ids().len(), 10);
    assert_eq!(last.header("x-next-page"), Some(""));

    let counted = get(&standin, "/api/v4/groups/team-0/projects?per_page=100").await;
    assert_eq!(counted.header("x-total"), Some("5005"));
    assert!(counted.links().contains_key("last"));
}

#[tokio::test]
async fn listing_5xx_fault_fails_every_nth_listing_request_and_all_are_counted() {
    let standin = start(Seed::demo(), quick()).await;
    standin.set_faults(Faults {
        listing_5xx_every: Some(3),
        ..Faults::default()
    });
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            get(&standin, "/api/v4/groups/acme/projects")
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 500, 200, 200, 500]);
    assert_eq!(standin.listing_requests(), 6);
}

// --- Exports ---

#[tokio::test]
async fn export_is_accepted_then_goes_queued_started_finished_and_uploads_a_gzip_tar() {
    let receiver = Receiver::start().await;
    let options = Options {
        step_delay: Duration::from_millis(150),
        ..Options::default()
    };
    let standin = start(Seed::demo(), options).await;
    let id = project_id(standin.seed(), "acme/api");
    assert_eq!(export_status(&standin, id).await, "none");

    let upload_url = format!("{}/bucket/acme-api.tar.gz", receiver.base_url);
    let answer = export(&standin, "acme%2Fapi", Some(&upload_url)).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert_eq!(answer.json, json!({ "message": "202 Accepted" }));

    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + IDLE_TIMEOUT;
    while seen.last().map(String::as_str) != Some("finished") && Instant::now() < deadline {
        let status = export_status(&standin, id).await;
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, ["queued", "started", "finished"]);

    let received = receiver.received();
    assert_eq!(received.len(), 1);
    let upload = &received[0];
    assert_eq!(upload.method, Method::PUT);
    assert_eq!(upload.path_and_query, "/bucket/acme-api.tar.gz");
    assert_eq!(upload.headers["content-type"], "application/gzip");
    assert_eq!(
        upload.headers["content-length"],
        upload.body.len().to_string().as_str()
    );
    let files = untar(&upload.body);
    assert_eq!(files["VERSION"], "0.2.4");
    let project: Value = serde_json::from_str(&files["project.json"]).unwrap();
    assert_eq!(project["path_with_namespace"], "acme/api");

    let uploads = standin.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(
        (uploads[0].project_id, uploads[0].status, uploads[0].bytes),
        (id, Some(200), upload.body.len())
    );
}

#[tokio::test]
async fn export_parameters_are_read_from_a_form_json_or_query() {
    let receiver = Receiver::start().await;
    let standin = start(Seed::demo(), quick()).await;
    let client = reqwest::Client::new();
    let export_url =
        |project: &str| format!("{}/api/v4/projects/{project}/export", standin.base_url());
    let upload = |name: &str| format!("{}/{name}", receiver.base_url);
    let requests = [
        with_form(
            client.post(export_url("acme%2Fwebsite")),
            &[("upload[url]", &upload("form"))],
        ),
        client
            .post(export_url("acme%2Fapi"))
            .json(&json!({ "upload": { "url": upload("nested-json"), "http_method": "PUT" } })),
        client
            .post(export_url("acme%2Fdocs"))
            .json(&json!({ "upload[url]": upload("flat-json") })),
        client.post(
            url::Url::parse_with_params(
                &export_url("globex%2Ffirmware"),
                [("upload[url]", upload("query"))],
            )
            .unwrap(),
        ),
    ];
    for request in requests {
        let answer = request.header("PRIVATE-TOKEN", TOKEN).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::ACCEPTED);
    }
    standin.wait_idle(IDLE_TIMEOUT).await.unwrap();
    let mut paths: Vec<String> = receiver
        .received()
        .into_iter()
        .map(|received| received.path_and_query)
        .collect();
    paths.sort();
    assert_eq!(paths, ["/flat-json", "/form", "/nested-json", "/query"]);
}

#[tokio::test]
async fn upload_url_reaches_the_receiver_byte_identical() {
    let receiver = Receiver::start().await;
    let standin = start(Seed::demo(), quick()).await;
    let path_and_query = "/bucket/acme%2Fapi%2F2024.tar.gz?X-Amz-Credential=AKIA%2F20240101%2Fauto%2Fs3&X-Amz-Signature=ab%3D%3Dcd&list=a=b";
    let upload_url = format!("{}{path_and_query}", receiver.base_url);
    assert_eq!(
        export(&standin, "acme%2Fapi", Some(&upload_url))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    standin.wait_idle(IDLE_TIMEOUT).await.unwrap();
    assert_eq!(receiver.received()[0].path_and_query, path_and_query);
    assert_eq!(standin.uploads()[0].url, upload_url);
    assert_eq!(
        standin.exports()[0].upload_url.as_deref(),
        Some(upload_url.as_str())
    );
}

#[tokio::test]
async fn upload_http_method_post_is_honoured_and_others_are_rejected() {
    let receiver = Receiver::start().await;
    let standin = start(Seed::demo(), quick()).await;
    let url = format!("{}/api/v4/projects/acme%2Fapi/export", standin.base_url());
    let upload_url = format!("{}/post-me", receiver.base_url);
    let post = |method: &str| {
        let request = reqwest::Client::new()
            .post(&url)
            .header("PRIVATE-TOKEN", TOKEN);
        with_form(
            request,
            &[
                ("upload[url]", &upload_url),
                ("upload[http_method]", method),
            ],
        )
        .send()
    };
    let rejected = Answer::read(post("PATCH").await.unwrap()).await;
    assert_eq!(rejected.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        rejected.json,
        json!({ "error": "upload[http_method] does not have a valid value" })
    );
    assert_eq!(post("POST").await.unwrap().status(), StatusCode::ACCEPTED);
    standin.wait_idle(IDLE_TIMEOUT).await.unwrap();
    assert_eq!(receiver.received()[0].method, Method::POST);
}

#[tokio::test]
async fn export_of_an_unknown_project_is_404_and_a_bad_upload_url_is_400() {
    let standin = start(Seed::demo(), quick()).await;
    let missing = export(&standin, "99999", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json, json!({ "message": "404 Project Not Found" }));
    for bad_url in ["not a url", "/relative/path", "ftp://127.0.0.1/file"] {
        let answer = export(&standin, "acme%2Fapi", Some(bad_url)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad_url}");
        assert_eq!(answer.json, json!({ "error": "upload[url] is invalid" }));
    }
    let missing_status = get(&standin, "/api/v4/projects/99999/export").await;
    assert_eq!(missing_status.status, StatusCode::NOT_FOUND);
    assert_eq!(
        export_status(&standin, project_id(standin.seed(), "acme/api")).await,
        "none"
    );
}

#[tokio::test]
async fn seventh_export_in_a_window_is_rate_limited_with_retry_after_60() {
    let standin = start(Seed::demo(), quick()).await;
    let ids: Vec<u64> = standin
        .seed()
        .projects()
        .iter()
        .take(7)
        .map(|project| project.id)
        .collect();
    for id in &ids[..6] {
        assert_eq!(
            export(&standin, &id.to_string(), None).await.status,
            StatusCode::ACCEPTED
        );
    }
    let limited = export(&standin, &ids[6].to_string(), None).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.header("retry-after"), Some("60"));
    assert_eq!(
        limited.json,
        json!({ "message": { "error": "This endpoint has been requested too many times. Try again later." } })
    );
    standin.wait_idle(IDLE_TIMEOUT).await.unwrap();
    assert_eq!(
        export_status(&standin, ids[6]).await,
        "none",
        "a 429 starts no export"
    );
}

#[tokio::test]
async fn exports_are_allowed_again_once_the_window_has_passed() {
    let window = Duration::from_millis(400);
    let options = Options {
        exports_per_window: 2,
        window,
        ..quick()
    };
    let standin = start(Seed::demo(), options).await;
    let statuses = async || {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(export(&standin, "acme%2Fapi", None).await.status.as_u16());
        }
        statuses
    };
    assert_eq!(statuses().await, [202, 202, 429]);
    tokio::time::sleep(window).await;
    assert_eq!(statuses().await, [202, 202, 429]);
}

#[tokio::test]
async fn export_answer_delay_holds_the_answer_but_records_and_counts_the_request_on_arrival() {
    let delay = Duration::from_millis(600);
    let options = Options {
        export_answer_delay: delay,
        ..quick()
    };
    let standin = Arc::new(start(Seed::demo(), options).await);
    let sent_at = SystemTime::now();
    let began = Instant::now();
    let exporting = {
        let standin = Arc::clone(&standin);
        tokio::spawn(async move { export(&standin, "acme%2Fapi", None).await.status })
    };
    tokio::time::sleep(delay / 3).await;
    let records = standin.exports();
    assert_eq!(records.len(), 1, "recorded before the answer");
    assert_eq!(records[0].status, 202);
    assert!(records[0].at.duration_since(sent_at).unwrap() < delay / 3);
    assert!(!exporting.is_finished(), "the answer waits");
    assert_eq!(exporting.await.unwrap(), StatusCode::ACCEPTED);
    assert!(began.elapsed() >= delay);
}

#[tokio::test]
async fn omit_retry_after_fault_drops_the_header_from_429() {
    let options = Options {
        exports_per_window: 1,
        ..quick()
    };
    let standin = start(Seed::demo(), options).await;
    standin.set_faults(Faults {
        omit_retry_after: true,
        ..Faults::default()
    });
    assert_eq!(
        export(&standin, "acme%2Fapi", None).await.status,
        StatusCode::ACCEPTED
    );
    let limited = export(&standin, "acme%2Fapi", None).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.header("retry-after"), None);
}

#[tokio::test]
async fn fail_build_fault_ends_the_export_failed_without_upload() {
    let receiver = Receiver::start().await;
    let standin = start(Seed::demo(), quick()).await;
    let id = project_id(standin.seed(), "acme/api");
    standin.set_faults(Faults {
        fail_build: HashSet::from([id]),
        ..Faults::default()
    });
    let upload_url = format!("{}/never", receiver.base_url);
    assert_eq!(
        export(&standin, &id.to_string(), Some(&upload_url))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    standin.wait_idle(IDLE_TIMEOUT).await.unwrap();
    assert_eq!(export_status(&standin, id).await, "failed");
    assert!(receiver.received().is_empty());
    assert!(standin.uploads().is_empty());
}

#[tokio::test]
async fn fail_upload_fault_still_finishes_but_the_receiver_never_gets_the_object() {
    let receiver = Receiver::start().await;
    let standin = start(Seed::demo(), quick()).await;
    let id = project_id(standin.seed(), "acme/api");
    standin.set_faults(Faults {
        fail_upload: HashSet::from([id]),
        ..Faults::default()
    });
    let upload_url = format!("{}/lost", receiver.base_url);
    assert_eq!(
        export(&standin, &id.to_string(), Some(&upload_url))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    standin.wait_idle(IDLE_TIMEOUT).await.unwrap();
    assert_eq!(export_status(&standin, id).await, "finished");
    assert!(receiver.received().is_empty());
    let uploads = standin.uploads();
    assert_eq!((uploads.len(), uploads[0].status), (1, None));
}

#[tokio::test]
async fn refused_or_unreachable_upload_still_finishes() {
    let standin = start(Seed::demo(), quick()).await;
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let upload_url = format!("http://127.0.0.1:{closed_port}/nobody-listens");
    assert_eq!(
        export(&standin, "acme%2Fapi", Some(&upload_url))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    standin.wait_idle(IDLE_TIMEOUT).await.unwrap();
    assert_eq!(
        export_status(&standin, project_id(standin.seed(), "acme/api")).await,
        "finished"
    );
    assert_eq!(standin.uploads()[0].status, None);
}

#[tokio::test]
async fn too_large_fault_answers_400_and_starts_nothing() {
    let standin = start(Seed::demo(), quick()).await;
    let id = project_id(standin.seed(), "acme/api");
    standin.set_faults(Faults {
        too_large: HashSet::from([id]),
        ..Faults::default()
    });
    let answer = export(&standin, &id.to_string(), None).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.json,
        json!({ "message": "The project size exceeds the export limit." })
    );
    assert_eq!(export_status(&standin, id).await, "none");
}

#[tokio::test]
async fn export_5xx_fault_fails_every_nth_export_request() {
    let standin = start(Seed::demo(), quick()).await;
    standin.set_faults(Faults {
        export_5xx_every: Some(2),
        ..Faults::default()
    });
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(export(&standin, "acme%2Fapi", None).await.status.as_u16());
    }
    assert_eq!(statuses, [202, 500, 202, 500]);
}

#[tokio::test]
async fn a_new_export_replaces_the_previous_status() {
    let options = Options {
        step_delay: Duration::from_millis(200),
        ..Options::default()
    };
    let standin = start(Seed::demo(), options).await;
    let id = project_id(standin.seed(), "acme/api");
    standin.set_faults(Faults {
        fail_build: HashSet::from([id]),
        ..Faults::default()
    });
    export(&standin, &id.to_string(), None).await;
    standin.wait_idle(IDLE_TIMEOUT).await.unwrap();
    assert_eq!(standin.export_status(id), ExportStatus::Failed);

    standin.set_faults(Faults::default());
    export(&standin, &id.to_string(), None).await;
    assert_eq!(standin.export_status(id), ExportStatus::Queued);
    standin.wait_idle(IDLE_TIMEOUT).await.unwrap();
    assert_eq!(standin.export_status(id), ExportStatus::Finished);
}

#[tokio::test]
async fn every_export_request_is_recorded_with_time_project_answer_and_upload_parameters() {
    let standin = start(
        Seed::demo(),
        Options {
            exports_per_window: 1,
            ..quick()
        },
    )
    .await;
    let before = SystemTime::now();
    let id = project_id(standin.seed(), "acme/api");
    export(
        &standin,
        "acme%2Fapi",
        Some("https://s3.example.test/b/k?sig=1"),
    )
    .await;
    export(&standin, "acme%2Fapi", None).await;
    export(&standin, "no%2Fsuch", None).await;
    let unauthorized = reqwest::Client::new()
        .post(format!(
            "{}/api/v4/projects/{id}/export",
            standin.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);

    let records = standin.exports();
    let summary: Vec<(ProjectRef, u16)> = records
        .iter()
        .map(|r| (r.project_id.clone(), r.status))
        .collect();
    assert_eq!(
        summary,
        [
            (ProjectRef::Known(id), 202),
            (ProjectRef::Known(id), 429),
            (ProjectRef::Unknown("no/such".to_owned()), 404),
            (ProjectRef::Known(id), 401),
        ]
    );
    assert!(records.windows(2).all(|pair| pair[0].at <= pair[1].at));
    assert!(records[0].at >= before);
    assert_eq!(
        records[0].upload_url.as_deref(),
        Some("https://s3.example.test/b/k?sig=1")
    );
    assert_eq!(records[0].method, None);

    let over_http = reqwest::get(format!("{}/__standin/exports", standin.base_url()))
        .await
        .unwrap();
    let over_http: Value = over_http.json().await.unwrap();
    assert_eq!(over_http.as_array().unwrap().len(), 4);
    assert_eq!(over_http[0]["project_id"], id);
    assert_eq!(over_http[0]["status"], 202);
    assert!(over_http[0]["at"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(over_http[2]["project_id"], "no/such");
}

#[tokio::test]
async fn uploads_are_served_as_json_without_a_token() {
    let receiver = Receiver::start().await;
    let standin = start(Seed::demo(), quick()).await;
    let upload_url = format!("{}/object", receiver.base_url);
    export(&standin, "acme%2Fapi", Some(&upload_url)).await;
    standin.wait_idle(IDLE_TIMEOUT).await.unwrap();
    let uploads: Value = reqwest::get(format!("{}/__standin/uploads", standin.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(uploads[0]["url"], upload_url);
    assert_eq!(uploads[0]["status"], 200);
    assert_eq!(
        uploads[0]["project_id"],
        project_id(standin.seed(), "acme/api")
    );
}

#[tokio::test]
async fn wait_idle_times_out_while_an_export_runs() {
    let options = Options {
        step_delay: Duration::from_secs(5),
        ..Options::default()
    };
    let standin = start(Seed::demo(), options).await;
    export(&standin, "acme%2Fapi", None).await;
    assert!(standin.wait_idle(Duration::from_millis(50)).await.is_err());
}

#[tokio::test]
async fn stop_frees_the_port() {
    let standin = start(Seed::demo(), quick()).await;
    let address = standin.base_url().trim_start_matches("http://").to_owned();
    get(&standin, "/api/v4/user").await;
    standin.stop().await;
    let rebound = tokio::net::TcpListener::bind(&address).await;
    assert!(rebound.is_ok(), "port of {address} is free again");
}

// --- Faults of the fault matrix: 429 bursts, late answers, held requests, outages, a changing world ---

#[tokio::test]
async fn a_429_burst_refuses_every_export_for_its_length_with_its_retry_after_and_takes_no_slot() {
    let lasting = Duration::from_millis(400);
    let standin = start(
        Seed::demo(),
        Options {
            exports_per_window: 3,
            ..quick()
        },
    )
    .await;
    standin.set_faults(Faults {
        export_429_burst: Some(Burst429 {
            from_request: 2,
            lasting,
            retry_after: Duration::from_millis(4_500),
        }),
        ..Faults::default()
    });
    let first = export(&standin, "acme%2Fapi", None).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    for _ in 0..2 {
        let limited = export(&standin, "acme%2Fapi", None).await;
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.header("retry-after"), Some("5"));
    }
    tokio::time::sleep(lasting).await;
    let mut after: Vec<u16> = Vec::new();
    for _ in 0..3 {
        after.push(export(&standin, "acme%2Fapi", None).await.status.as_u16());
    }
    // The burst's 429s took no slot: 2 more fit the window of 3, then GitLab's own 429.
    assert_eq!(after, [202, 202, 429]);
    let statuses: Vec<u16> = standin.exports().iter().map(|e| e.status).collect();
    assert_eq!(statuses, [202, 429, 429, 202, 202, 429]);

    // Without Retry-After (the burst's start is kept per stand-in: a fresh one for a fresh burst).
    let fresh = start(Seed::demo(), quick()).await;
    fresh.set_faults(Faults {
        omit_retry_after: true,
        export_429_burst: Some(Burst429 {
            from_request: 1,
            lasting: Duration::from_secs(60),
            retry_after: Duration::from_secs(60),
        }),
        ..Faults::default()
    });
    let limited = export(&fresh, "acme%2Fapi", None).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.header("retry-after"), None);
}

#[tokio::test]
async fn export_answer_delays_hold_the_answer_of_the_chosen_requests_only() {
    let delay = Duration::from_millis(500);
    let standin = start(Seed::demo(), quick()).await;
    standin.set_faults(Faults {
        export_answer_delays: [(2, delay)].into(),
        ..Faults::default()
    });
    let mut took = Vec::new();
    for _ in 0..3 {
        let began = Instant::now();
        assert_eq!(
            export(&standin, "acme%2Fapi", None).await.status,
            StatusCode::ACCEPTED
        );
        took.push(began.elapsed());
    }
    assert!(took[0] < delay / 2 && took[2] < delay / 2, "{took:?}");
    assert!(took[1] >= delay, "{took:?}");
}

#[tokio::test]
async fn a_request_held_before_arrival_is_dropped_unrecorded_and_starts_no_export() {
    let standin = Arc::new(start(Seed::demo(), quick()).await);
    let id = project_id(standin.seed(), "acme/api");
    standin.set_faults(Faults {
        hold_export: Some(HoldExport {
            request: 2,
            stage: HoldStage::BeforeArrival,
        }),
        ..Faults::default()
    });
    export(&standin, "acme%2Fwebsite", None).await;
    let exporting = {
        let standin = Arc::clone(&standin);
        tokio::spawn(async move { export(&standin, &id.to_string(), None).await.status })
    };
    let held = standin.wait_held(IDLE_TIMEOUT).await.unwrap();
    assert_eq!(
        (held.project_id, held.request, held.stage),
        (ProjectRef::Known(id), 2, HoldStage::BeforeArrival)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!exporting.is_finished(), "held");
    assert_eq!(standin.exports().len(), 1, "not recorded");
    assert_eq!(standin.export_status(id), ExportStatus::None);
    standin.release_held();
    assert_eq!(exporting.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(standin.exports().len(), 1, "dropped");
    assert_eq!(standin.export_status(id), ExportStatus::None);
    // Once released, nothing more is held.
    assert_eq!(
        export(&standin, &id.to_string(), None).await.status,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn a_request_held_before_its_answer_is_recorded_and_its_export_runs_meanwhile() {
    let standin = Arc::new(start(Seed::demo(), quick()).await);
    let id = project_id(standin.seed(), "acme/api");
    standin.set_faults(Faults {
        hold_export: Some(HoldExport {
            request: 1,
            stage: HoldStage::BeforeAnswer,
        }),
        ..Faults::default()
    });
    let exporting = {
        let standin = Arc::clone(&standin);
        tokio::spawn(async move { export(&standin, &id.to_string(), None).await.status })
    };
    let held = standin.wait_held(IDLE_TIMEOUT).await.unwrap();
    assert_eq!(held.stage, HoldStage::BeforeAnswer);
    assert_eq!(standin.exports()[0].status, 202, "recorded as accepted");
    standin.wait_idle(IDLE_TIMEOUT).await.unwrap();
    assert_eq!(standin.export_status(id), ExportStatus::Finished);
    assert!(!exporting.is_finished(), "the answer is held");
    standin.release_held();
    assert_eq!(exporting.await.unwrap(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_paused_stand_in_refuses_connections_keeps_its_state_and_resumes_on_the_same_address() {
    let receiver = Receiver::start().await;
    let options = Options {
        step_delay: Duration::from_millis(300),
        ..Options::default()
    };
    let mut standin = start(Seed::demo(), options).await;
    let upload_url = format!("{}/during-outage", receiver.base_url);
    assert_eq!(
        export(&standin, "acme%2Fapi", Some(&upload_url))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    standin.pause().await;
    let refused = reqwest::Client::new()
        .get(format!("{}/api/v4/user", standin.base_url()))
        .send()
        .await;
    assert!(refused.is_err_and(|e| e.is_connect()), "connection refused");
    // GitLab's own jobs go on during the outage.
    standin.wait_idle(IDLE_TIMEOUT).await.unwrap();
    assert_eq!(receiver.received().len(), 1);
    standin.resume().await.unwrap();
    assert_eq!(get(&standin, "/api/v4/user").await.status, StatusCode::OK);
    assert_eq!(standin.exports().len(), 1);
    assert_eq!(
        export_status(&standin, project_id(standin.seed(), "acme/api")).await,
        "finished"
    );
}

#[tokio::test]
async fn changes_at_the_first_export_delete_and_rename_projects_everywhere() {
    let receiver = Receiver::start().await;
    let standin = start(Seed::demo(), quick()).await;
    let gone = project_id(standin.seed(), "acme/api");
    let renamed = project_id(standin.seed(), "acme/website");
    standin.set_faults(Faults {
        on_first_export: vec![
            ProjectChange::Delete(gone),
            ProjectChange::Rename {
                id: renamed,
                path: "site".to_owned(),
            },
        ],
        ..Faults::default()
    });
    let listed = |answer: &Answer| -> Vec<String> {
        answer
            .json
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["path_with_namespace"].as_str().unwrap().to_owned())
            .collect()
    };
    let before = get(&standin, "/api/v4/groups/acme/projects").await;
    assert!(listed(&before).contains(&"acme/api".to_owned()));
    assert!(listed(&before).contains(&"acme/website".to_owned()));

    // The first export request (of the project about to be deleted) meets the changed world.
    assert_eq!(
        export(&standin, &gone.to_string(), None).await.status,
        StatusCode::NOT_FOUND
    );
    let after = get(&standin, "/api/v4/groups/acme/projects").await;
    assert_eq!(
        after.header("x-total"),
        Some(&*(before.ids().len() - 1).to_string())
    );
    assert!(!listed(&after).contains(&"acme/api".to_owned()));
    assert!(listed(&after).contains(&"acme/site".to_owned()));
    assert!(!listed(&after).contains(&"acme/website".to_owned()));
    let status = get(&standin, &format!("/api/v4/projects/{gone}/export")).await;
    assert_eq!(status.status, StatusCode::NOT_FOUND);

    let by_old_path = get(&standin, "/api/v4/projects/acme%2Fwebsite/export").await;
    assert_eq!(by_old_path.status, StatusCode::NOT_FOUND);
    let by_new_path = get(&standin, "/api/v4/projects/acme%2Fsite/export").await;
    assert_eq!(by_new_path.json["id"], renamed);
    let upload_url = format!("{}/renamed", receiver.base_url);
    assert_eq!(
        export(&standin, &renamed.to_string(), Some(&upload_url))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    standin.wait_idle(IDLE_TIMEOUT).await.unwrap();
    let files = untar(&receiver.received()[0].body);
    let project: Value = serde_json::from_str(&files["project.json"]).unwrap();
    assert_eq!(project["path_with_namespace"], "acme/site");
    let records: Vec<(ProjectRef, u16)> = standin
        .exports()
        .iter()
        .map(|r| (r.project_id.clone(), r.status))
        .collect();
    assert_eq!(
        records,
        [
            (ProjectRef::Unknown(gone.to_string()), 404),
            (ProjectRef::Known(renamed), 202)
        ]
    );
}

#[tokio::test]
async fn a_revoked_token_is_refused_everywhere_until_restored() {
    let standin = start(Seed::demo(), quick()).await;
    assert_eq!(get(&standin, "/api/v4/user").await.status, StatusCode::OK);
    standin.set_token_revoked(true);
    for path in [
        "/api/v4/user",
        "/api/v4/groups/acme/projects",
        "/api/v4/projects/acme%2Fapi/export",
    ] {
        let answer = get(&standin, path).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(answer.json, json!({ "message": "401 Unauthorized" }));
    }
    assert_eq!(
        export(&standin, "acme%2Fapi", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(standin.exports()[0].status, 401);
    standin.set_token_revoked(false);
    assert_eq!(get(&standin, "/api/v4/user").await.status, StatusCode::OK);
}

// --- A project's statistics ---

#[tokio::test]
async fn a_project_is_described_with_its_statistics_when_asked_and_is_404_once_gone() {
    let seed = Seed::demo();
    let api = project_id(&seed, "acme/api");
    let big = project_id(&seed, "acme/website");
    let huge = Statistics {
        repository_size: 6 << 30,
        lfs_objects_size: 1 << 30,
        job_artifacts_size: 500,
        container_registry_size: 7,
        ..Statistics::default()
    };
    let standin = start(seed.with_statistics(big, huge), quick()).await;

    let plain = get(&standin, &format!("/api/v4/projects/{api}")).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(plain.json["id"], api);
    assert_eq!(plain.json["path_with_namespace"], "acme/api");
    assert_eq!(plain.json["archived"], false);
    assert!(plain.json.get("statistics").is_none(), "{}", plain.json);
    let not_asked = get(
        &standin,
        &format!("/api/v4/projects/{api}?statistics=false"),
    )
    .await;
    assert!(not_asked.json.get("statistics").is_none());

    // By id or by encoded path; GitLab's fields, and the sum it keeps as storage_size.
    let seeded = standin.seed().project(api).unwrap().statistics;
    for key in [api.to_string(), "acme%2Fapi".to_owned()] {
        let answer = get(&standin, &format!("/api/v4/projects/{key}?statistics=true")).await;
        assert_eq!(answer.status, StatusCode::OK, "{key}");
        let statistics = &answer.json["statistics"];
        let fields: Vec<&str> = statistics
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "commit_count",
            "container_registry_size",
            "job_artifacts_size",
            "lfs_objects_size",
            "packages_size",
            "pipeline_artifacts_size",
            "repository_size",
            "snippets_size",
            "storage_size",
            "uploads_size",
            "wiki_size",
        ];
        expected.sort_unstable();
        let mut fields = fields;
        fields.sort_unstable();
        assert_eq!(fields, expected);
        assert_eq!(statistics["repository_size"], seeded.repository_size);
        let parts: u64 = [
            "repository_size",
            "wiki_size",
            "lfs_objects_size",
            "job_artifacts_size",
            "packages_size",
            "snippets_size",
            "uploads_size",
        ]
        .iter()
        .map(|name| statistics[name].as_u64().unwrap())
        .sum();
        assert!(parts > 0);
        assert_eq!(statistics["storage_size"], parts);
    }
    let sized = get(&standin, &format!("/api/v4/projects/{big}?statistics=1")).await;
    assert_eq!(sized.json["statistics"]["repository_size"], 6u64 << 30);
    assert_eq!(
        sized.json["statistics"]["storage_size"],
        (6u64 << 30) + (1 << 30) + 500,
        "the container registry is not in storage_size"
    );

    let bad = get(
        &standin,
        &format!("/api/v4/projects/{api}?statistics=maybe"),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json, json!({ "error": "statistics is invalid" }));
    let unknown = get(&standin, "/api/v4/projects/999999?statistics=true").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json, json!({ "message": "404 Project Not Found" }));
    standin.apply(ProjectChange::Delete(api));
    let gone = get(&standin, &format!("/api/v4/projects/{api}?statistics=true")).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    standin.set_token_revoked(true);
    let refused = get(&standin, &format!("/api/v4/projects/{big}")).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_project_deleted_after_a_listing_page_shifts_the_pages_after_it() {
    let seed = Seed::generated(1, 6);
    let ids: Vec<u64> = seed.own_projects("team-0").iter().map(|p| p.id).collect();
    let standin = start(
        seed,
        Options {
            max_per_page: 2,
            ..quick()
        },
    )
    .await;
    standin.set_faults(Faults {
        after_listing: vec![(1, ProjectChange::Delete(ids[0]))],
        ..Faults::default()
    });
    let page = |n: u64| {
        format!(
            "/api/v4/groups/team-0/projects?include_subgroups=true&order_by=id&sort=asc&page={n}"
        )
    };
    let first = get(&standin, &page(1)).await;
    assert_eq!(first.ids(), ids[0..2]);
    assert_eq!(first.header("x-total"), Some("6"));
    // The first project went once page 1 was read: page 2 starts one further on.
    let second = get(&standin, &page(2)).await;
    assert_eq!(second.ids(), ids[3..5]);
    assert_eq!(second.header("x-total"), Some("5"));
    let again = get(&standin, &page(1)).await;
    assert_eq!(again.ids(), ids[1..3]);
    assert_eq!(
        get(&standin, &format!("/api/v4/projects/{}", ids[0]))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

/// Project id → `last_activity_at` in the simple listing of `team-0`.
async fn listed_activity(standin: &Standin) -> BTreeMap<u64, String> {
    let listing = get(
        standin,
        "/api/v4/groups/team-0/projects?simple=true&include_subgroups=true&per_page=100",
    )
    .await;
    assert_eq!(listing.status, StatusCode::OK);
    listing
        .json
        .as_array()
        .expect("array")
        .iter()
        .map(|project| {
            let id = project["id"].as_u64().expect("id");
            let at = project["last_activity_at"].as_str().expect("a string");
            (id, at.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn last_activity_at_is_created_at_until_an_event_moves_it_to_now_and_moves_again_only_after_an_hour(
) {
    let seed = Seed::generated(1, 4);
    let created: BTreeMap<u64, String> = seed
        .own_projects("team-0")
        .iter()
        .map(|project| (project.id, project.created_at.clone()))
        .collect();
    let ids: Vec<u64> = created.keys().copied().collect();
    let (active, deleted) = (ids[1], ids[2]);
    let standin = start(seed, quick()).await;
    assert_eq!(listed_activity(&standin).await, created, "a fresh project");

    let before = time::OffsetDateTime::now_utc();
    standin.apply(ProjectChange::Activity(active));
    let after = time::OffsetDateTime::now_utc();
    let listed = listed_activity(&standin).await;
    let moved = listed[&active].clone();
    // GitLab's form: milliseconds, in UTC.
    assert_eq!(moved.len(), "2024-08-08T13:24:13.543Z".len(), "{moved}");
    assert!(
        moved.ends_with('Z') && moved.as_bytes()[19] == b'.',
        "{moved}"
    );
    let at = time::OffsetDateTime::parse(&moved, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");
    let millisecond = time::Duration::milliseconds(1);
    assert!(before - millisecond <= at && at <= after, "{moved} is now");
    for id in [ids[0], ids[2], ids[3]] {
        assert_eq!(listed[&id], created[&id], "an untouched project");
    }
    let detail = get(&standin, &format!("/api/v4/projects/{active}")).await;
    assert_eq!(detail.json["last_activity_at"], moved.as_str());
    assert_eq!(detail.json["created_at"], created[&active].as_str());

    // Within the hour a second event leaves it as it is.
    tokio::time::sleep(Duration::from_millis(5)).await;
    standin.apply(ProjectChange::Activity(active));
    assert_eq!(listed_activity(&standin).await[&active], moved);

    // A renamed project keeps it; an event in a deleted or unknown one changes nothing.
    standin.apply(ProjectChange::Rename {
        id: active,
        path: "renamed".to_owned(),
    });
    let detail = get(&standin, &format!("/api/v4/projects/{active}")).await;
    assert_eq!(detail.json["path"], "renamed");
    assert_eq!(detail.json["last_activity_at"], moved.as_str());
    standin.apply(ProjectChange::Delete(deleted));
    standin.apply(ProjectChange::Activity(deleted));
    standin.apply(ProjectChange::Activity(999_999));
    let listed = listed_activity(&standin).await;
    assert!(!listed.contains_key(&deleted));
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[&ids[0]], created[&ids[0]]);
}

#[test]
fn an_event_moves_last_activity_at_only_when_it_is_an_hour_old_or_older() {
    use super::state::activity_after_event;
    use time::macros::datetime;
    let now = datetime!(2024-08-08 13:24:13.543 UTC);
    let moved = Some("2024-08-08T13:24:13.543Z".to_owned());
    assert_eq!(activity_after_event("2024-01-01T00:16:41.000Z", now), moved);
    assert_eq!(
        activity_after_event("2024-08-08T12:24:13.543Z", now),
        moved,
        "exactly an hour"
    );
    assert_eq!(
        activity_after_event("2024-08-08T12:24:13.544Z", now),
        None,
        "just within the hour"
    );
    assert_eq!(activity_after_event("2024-08-08T13:00:00.000Z", now), None);
    assert_eq!(
        activity_after_event("2024-08-08T15:24:13+02:00", now),
        None,
        "any offset"
    );
    assert_eq!(
        activity_after_event("2024-08-08T11:24:13+00:00", now),
        moved
    );
    assert_eq!(activity_after_event("not a time", now), moved);
    assert_eq!(
        activity_after_event(
            "2024-01-01T00:00:00.000Z",
            datetime!(2024-08-08 13:24:13 UTC)
        ),
        Some("2024-08-08T13:24:13.000Z".to_owned()),
        "whole seconds keep their three digits"
    );
}

#[tokio::test]
async fn export_status_5xx_fault_answers_500_for_those_projects_and_their_exports_still_upload() {
    let receiver = Receiver::start().await;
    let standin = start(Seed::demo(), quick()).await;
    let broken = project_id(standin.seed(), "acme/api");
    let fine = project_id(standin.seed(), "acme/docs");
    standin.set_faults(Faults {
        export_status_5xx: HashSet::from([broken]),
        ..Faults::default()
    });
    let upload_url = format!("{}/uploaded", receiver.base_url);
    assert_eq!(
        export(&standin, &broken.to_string(), Some(&upload_url))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    standin.wait_idle(IDLE_TIMEOUT).await.unwrap();
    let status = get(&standin, &format!("/api/v4/projects/{broken}/export")).await;
    assert_eq!(status.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        status.json,
        json!({ "message": "500 Internal Server Error" })
    );
    assert_eq!(export_status(&standin, fine).await, "none");
    assert_eq!(standin.export_status(broken), ExportStatus::Finished);
    assert_eq!(receiver.received().len(), 1, "the export still uploaded");
}

// --- Imports (POST /projects/remote-import) and deletions ---

/// Options for import tests: quick import steps, and plain http accepted (the archive server here
/// speaks http).
fn importing() -> Options {
    Options {
        import_step_delay: Duration::from_millis(20),
        allow_http_imports: true,
        ..Options::default()
    }
}

/// How the archive server answers.
#[derive(Clone)]
struct Serving {
    body: Vec<u8>,
    head_status: StatusCode,
    /// `Content-Type` of both answers.
    content_type: Option<&'static str>,
    /// `Content-Length` of the `HEAD` answer; `None`: the body's length.
    head_content_length: Option<String>,
    /// More headers of the `HEAD` answer.
    head_headers: Vec<(&'static str, &'static str)>,
    /// How long the `HEAD` takes to answer.
    head_delay: Duration,
    get_status: StatusCode,
}

impl Serving {
    fn archive(body: Vec<u8>) -> Serving {
        Serving {
            body,
            head_status: StatusCode::OK,
            content_type: Some("application/gzip"),
            head_content_length: None,
            head_headers: Vec::new(),
            head_delay: Duration::ZERO,
            get_status: StatusCode::OK,
        }
    }
}

/// A bucket stand-in serving one object at `/bucket/backup.tar.gz` (`HEAD` and `GET`, as
/// [`Serving`] says) and keeping the methods it was asked with.
struct ArchiveServer {
    url: String,
    methods: Arc<Mutex<Vec<Method>>>,
}

impl ArchiveServer {
    async fn start(serving: Serving) -> ArchiveServer {
        type ServerState = (Serving, Arc<Mutex<Vec<Method>>>);
        async fn answer(
            State((serving, methods)): State<ServerState>,
            method: Method,
        ) -> axum::response::Response {
            methods.lock().unwrap().push(method.clone());
            let mut builder = axum::http::Response::builder();
            if let Some(content_type) = serving.content_type {
                builder = builder.header("content-type", content_type);
            }
            if method == Method::HEAD {
                tokio::time::sleep(serving.head_delay).await;
                let length = serving
                    .head_content_length
                    .clone()
                    .unwrap_or_else(|| serving.body.len().to_string());
                builder = builder.status(serving.head_status);
                for (name, value) in &serving.head_headers {
                    builder = builder.header(*name, *value);
                }
                return builder
                    .header("content-length", length)
                    .body(axum::body::Body::empty())
                    .unwrap();
            }
            builder
                .status(serving.get_status)
                .body(axum::body::Body::from(serving.body.clone()))
                .unwrap()
        }
        let methods = Arc::default();
        let app = axum::Router::new()
            .route("/bucket/backup.tar.gz", axum::routing::any(answer))
            .with_state((serving, Arc::clone(&methods)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/bucket/backup.tar.gz",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        ArchiveServer { url, methods }
    }

    fn methods(&self) -> Vec<Method> {
        self.methods.lock().unwrap().clone()
    }
}

/// `POST /api/v4/projects/remote-import` with the token and a JSON body.
async fn remote_import(standin: &Standin, body: Value) -> Answer {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/api/v4/projects/remote-import",
            standin.base_url()
        ))
        .header("PRIVATE-TOKEN", TOKEN)
        .json(&body)
        .send()
        .await;
    Answer::read(response.expect("request")).await
}

/// `GET /projects/:id/import` until the import is neither `scheduled` nor `started`; every status
/// seen, in order, and the last answer.
async fn wait_import(standin: &Standin, project_id: u64) -> (Vec<String>, Value) {
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + IDLE_TIMEOUT;
    loop {
        let answer = get(standin, &format!("/api/v4/projects/{project_id}/import")).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        let status = answer.json["import_status"]
            .as_str()
            .expect("import_status")
            .to_owned();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if !matches!(status.as_str(), "scheduled" | "started") || Instant::now() > deadline {
            return (seen, answer.json);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A gzip'd tar holding these files.
fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, *contents).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// Imports refused with this 400 message, and neither a project nor an import came of it.
async fn assert_refused(standin: &Standin, body: Value, message: &str) {
    let before = standin.imports().len();
    let answer = remote_import(standin, body).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.json);
    assert_eq!(answer.json, json!({ "message": message }));
    let imports = standin.imports();
    assert_eq!(imports.len(), before + 1);
    let record = imports.last().unwrap();
    assert_eq!(record.status, 400);
    assert_eq!(record.message.as_deref(), Some(message));
    assert_eq!(record.project_id, None);
    assert_eq!(record.import_status, None);
}

#[tokio::test]
async fn remote_import_heads_then_downloads_the_archive_and_creates_the_project_in_the_group() {
    let standin = start(Seed::demo(), importing()).await;
    let source = project_id(standin.seed(), "acme/website");
    let archive = standin.export_archive(source).unwrap();
    let server = ArchiveServer::start(Serving::archive(archive.clone())).await;

    let answer = remote_import(
        &standin,
        json!({ "url": server.url, "path": "website-restored", "namespace": "acme" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    let id = answer.json["id"].as_u64().expect("id");
    assert!(standin.seed().project(id).is_none(), "a new project");
    assert_eq!(answer.json["name"], "website-restored");
    assert_eq!(answer.json["path"], "website-restored");
    assert_eq!(answer.json["path_with_namespace"], "acme/website-restored");
    assert_eq!(
        answer.json["name_with_namespace"],
        "Acme / website-restored"
    );
    assert_eq!(answer.json["import_status"], "scheduled");
    assert_eq!(answer.json["import_type"], "gitlab_project");
    assert_eq!(answer.json["failed_relations"], json!([]));
    assert_eq!(answer.json["import_error"], Value::Null);

    let (seen, last) = wait_import(&standin, id).await;
    assert_eq!(seen, ["scheduled", "started", "finished"]);
    assert_eq!(last["import_error"], Value::Null);
    assert_eq!(last["path_with_namespace"], "acme/website-restored");
    assert_eq!(standin.import_status(id), ImportStatus::Finished);
    assert_eq!(server.methods(), [Method::HEAD, Method::GET]);

    let project = get(&standin, &format!("/api/v4/projects/{id}")).await;
    assert_eq!(project.status, StatusCode::OK);
    assert_eq!(project.json["path_with_namespace"], "acme/website-restored");
    let by_path = get(&standin, "/api/v4/projects/acme%2Fwebsite-restored").await;
    assert_eq!(by_path.json["id"], id);
    let listing = get(&standin, "/api/v4/groups/acme/projects?per_page=100").await;
    assert!(listing.ids().contains(&id), "listed in its group");

    let imports = standin.imports();
    assert_eq!(imports.len(), 1);
    let record = &imports[0];
    assert_eq!(record.status, 201);
    assert_eq!(record.url.as_deref(), Some(server.url.as_str()));
    assert_eq!(record.namespace.as_deref(), Some("acme"));
    assert_eq!(record.path.as_deref(), Some("website-restored"));
    assert_eq!(record.project_id, Some(id));
    assert_eq!(record.import_status, Some(ImportStatus::Finished));
    let head = record.head.as_ref().expect("a HEAD was sent");
    assert_eq!(head.status, Some(200));
    assert_eq!(head.content_type.as_deref(), Some("application/gzip"));
    assert_eq!(head.content_length, Some(archive.len().to_string()));
    assert_eq!(record.archive_sha256, Some(sha256_hex(&archive)));
    assert_eq!(record.archive_bytes, Some(archive.len() as u64));

    let over_http = reqwest::get(format!("{}/__standin/imports", standin.base_url()))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(over_http[0]["archive_sha256"], sha256_hex(&archive));
    assert_eq!(over_http[0]["archive_bytes"], archive.len());
    assert_eq!(over_http[0]["import_status"], "finished");
    assert_eq!(over_http[0]["head"]["status"], 200);
    assert_eq!(over_http[0]["project_id"], id);
}

#[tokio::test]
async fn remote_import_takes_a_form_body_a_namespace_id_and_a_name() {
    let standin = start(Seed::demo(), importing()).await;
    let source = project_id(standin.seed(), "acme/api");
    let server =
        ArchiveServer::start(Serving::archive(standin.export_archive(source).unwrap())).await;
    let group = standin.seed().group_by_path("globex/research").unwrap().id;
    let request = reqwest::Client::new()
        .post(format!(
            "{}/api/v4/projects/remote-import",
            standin.base_url()
        ))
        .header("PRIVATE-TOKEN", TOKEN);
    let group_id = group.to_string();
    let params = [
        ("url", server.url.as_str()),
        ("path", "api-copy"),
        ("name", "API copy"),
        ("namespace", group_id.as_str()),
    ];
    let answer = Answer::read(with_form(request, &params).send().await.unwrap()).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    assert_eq!(answer.json["name"], "API copy");
    assert_eq!(
        answer.json["path_with_namespace"],
        "globex/research/api-copy"
    );
    let id = answer.json["id"].as_u64().unwrap();
    assert_eq!(
        wait_import(&standin, id).await.0.last().unwrap(),
        "finished"
    );
    let listing = get(
        &standin,
        "/api/v4/groups/globex/projects?include_subgroups=true",
    )
    .await;
    assert!(listing.ids().contains(&id));
    let own = get(&standin, "/api/v4/groups/globex/projects").await;
    assert!(
        !own.ids().contains(&id),
        "a subgroup's project, listed only with include_subgroups"
    );
}

#[tokio::test]
async fn an_http_url_is_refused_as_gitlab_accepts_only_https_unless_the_test_switch_allows_it() {
    let standin = start(
        Seed::demo(),
        Options {
            allow_http_imports: false,
            ..importing()
        },
    )
    .await;
    let server = ArchiveServer::start(Serving::archive(tar_gz(&[("VERSION", b"0.2.4")]))).await;
    let body = json!({ "url": server.url, "path": "restored", "namespace": "acme" });
    assert_refused(
        &standin,
        body.clone(),
        "File url is blocked: Only allowed schemes are https",
    )
    .await;
    assert_refused(
        &standin,
        json!({ "url": "ftp://example.com/x.tar.gz", "path": "restored", "namespace": "acme" }),
        "File url is blocked: Only allowed schemes are https",
    )
    .await;
    assert_refused(
        &standin,
        json!({ "url": "not a url", "path": "restored", "namespace": "acme" }),
        "File url is blocked: URI is invalid",
    )
    .await;

    let allowed = start(Seed::demo(), importing()).await;
    assert_eq!(
        remote_import(&allowed, body).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_head_with_a_content_type_other_than_gzip_or_tar_is_refused() {
    let standin = start(Seed::demo(), importing()).await;
    let archive = tar_gz(&[("VERSION", b"0.2.4")]);
    for content_type in [
        "application/gzip",
        "application/x-gzip",
        "application/x-tar",
    ] {
        let server = ArchiveServer::start(Serving {
            content_type: Some(content_type),
            ..Serving::archive(archive.clone())
        })
        .await;
        let path = content_type.replace('/', "-");
        let answer = remote_import(
            &standin,
            json!({ "url": server.url, "path": path, "namespace": "acme" }),
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{content_type}: {}",
            answer.json
        );
    }
    for (content_type, shown) in [
        (Some("text/html"), "text/html"),
        (
            Some("application/gzip; charset=binary"),
            "application/gzip; charset=binary",
        ),
        (None, ""),
    ] {
        let server = ArchiveServer::start(Serving {
            content_type,
            ..Serving::archive(archive.clone())
        })
        .await;
        assert_refused(
            &standin,
            json!({ "url": server.url, "path": "restored", "namespace": "acme" }),
            &format!(
                "Content type '{shown}' not allowed. (Allowed: application/gzip, application/x-tar, application/x-gzip)"
            ),
        )
        .await;
        assert_eq!(
            server.methods(),
            [Method::HEAD],
            "refused after the HEAD, not downloaded"
        );
    }
}

#[tokio::test]
async fn a_head_with_no_or_zero_length_or_more_than_10_gib_is_refused() {
    let standin = start(Seed::demo(), importing()).await;
    let archive = tar_gz(&[("VERSION", b"0.2.4")]);
    for (length, message) in [
        (
            "0",
            "Content length is too small (should be at least 1 Byte)",
        ),
        (
            "",
            "Content length is too small (should be at least 1 Byte)",
        ),
        (
            "10737418241",
            "Content length is too big (should be at most 10 GiB)",
        ),
    ] {
        let server = ArchiveServer::start(Serving {
            head_content_length: Some(length.to_owned()),
            // Length comes before type: both wrong, the length is reported.
            content_type: Some("text/plain"),
            ..Serving::archive(archive.clone())
        })
        .await;
        assert_refused(
            &standin,
            json!({ "url": server.url, "path": "restored", "namespace": "acme" }),
            message,
        )
        .await;
    }
    let server = ArchiveServer::start(Serving {
        head_content_length: Some("10737418240".to_owned()),
        ..Serving::archive(archive)
    })
    .await;
    let answer = remote_import(
        &standin,
        json!({ "url": server.url, "path": "restored", "namespace": "acme" }),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::CREATED,
        "10 GiB itself is allowed: {}",
        answer.json
    );
}

#[tokio::test]
async fn a_head_that_takes_more_than_a_second_or_finds_no_server_is_refused() {
    let standin = start(Seed::demo(), importing()).await;
    let server = ArchiveServer::start(Serving {
        head_delay: Duration::from_millis(1500),
        ..Serving::archive(tar_gz(&[("VERSION", b"0.2.4")]))
    })
    .await;
    let began = Instant::now();
    let answer = remote_import(
        &standin,
        json!({ "url": server.url, "path": "restored", "namespace": "acme" }),
    )
    .await;
    let took = began.elapsed();
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.json);
    assert_eq!(
        answer.json["message"],
        "Failed to retrive headers: Net::ReadTimeout with #<TCPSocket:(closed)>"
    );
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(1450),
        "GitLab waits 1 s for the HEAD: {took:?}"
    );
    let record = standin.imports().pop().unwrap();
    assert!(record.head.unwrap().error.is_some());

    let closed = free_port();
    let url = format!("http://127.0.0.1:{closed}/bucket/backup.tar.gz");
    assert_refused(
        &standin,
        json!({ "url": url, "path": "restored", "namespace": "acme" }),
        &format!(
            "Failed to retrive headers: Failed to open TCP connection to 127.0.0.1:{closed} (Connection refused - connect(2) for \"127.0.0.1\" port {closed})"
        ),
    )
    .await;
}

/// A port nothing listens on (bound, then freed).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn an_aws_s3_head_is_accepted_whatever_its_status_and_headers() {
    let standin = start(Seed::demo(), importing()).await;
    let archive = standin
        .export_archive(project_id(standin.seed(), "acme/docs"))
        .unwrap();
    // A URL presigned for GET refuses the HEAD: 403, XML, no length.
    let aws = Serving {
        head_status: StatusCode::FORBIDDEN,
        content_type: Some("application/xml"),
        head_content_length: Some("0".to_owned()),
        head_headers: vec![
            ("server", "AmazonS3"),
            ("x-amz-request-id", "4442587FB7D0A2F9"),
        ],
        ..Serving::archive(archive.clone())
    };
    let server = ArchiveServer::start(aws.clone()).await;
    let answer = remote_import(
        &standin,
        json!({ "url": server.url, "path": "docs", "namespace": "initech" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    let id = answer.json["id"].as_u64().unwrap();
    assert_eq!(
        wait_import(&standin, id).await.0.last().unwrap(),
        "finished"
    );
    let head = standin.imports()[0].head.clone().unwrap();
    assert_eq!(head.status, Some(403));
    assert_eq!(head.server.as_deref(), Some("AmazonS3"));

    // Without the request id, or from another server, it is not taken for AWS, and checked.
    for headers in [
        vec![("server", "AmazonS3")],
        vec![
            ("server", "MinIO"),
            ("x-amz-request-id", "4442587FB7D0A2F9"),
        ],
        vec![("x-amz-request-id", "4442587FB7D0A2F9")],
    ] {
        let not_aws = ArchiveServer::start(Serving {
            head_headers: headers,
            ..aws.clone()
        })
        .await;
        assert_refused(
            &standin,
            json!({ "url": not_aws.url, "path": "docs-2", "namespace": "initech" }),
            "Content length is too small (should be at least 1 Byte)",
        )
        .await;
    }
}

#[tokio::test]
async fn a_path_or_name_taken_in_the_namespace_is_refused_unless_overwrite_replaces_the_project() {
    let standin = start(Seed::demo(), importing()).await;
    let existing = project_id(standin.seed(), "acme/website");
    let archive = standin.export_archive(existing).unwrap();
    let server = ArchiveServer::start(Serving::archive(archive)).await;
    assert_refused(
        &standin,
        json!({ "url": server.url, "path": "WEBSITE", "namespace": "acme" }),
        "Path has already been taken",
    )
    .await;
    assert_refused(
        &standin,
        json!({ "url": server.url, "path": "website-2", "name": "website", "namespace": "acme" }),
        "Name has already been taken",
    )
    .await;
    // Another namespace is free.
    let elsewhere = remote_import(
        &standin,
        json!({ "url": server.url, "path": "website", "namespace": "globex" }),
    )
    .await;
    assert_eq!(elsewhere.status, StatusCode::CREATED);

    let answer = remote_import(
        &standin,
        json!({ "url": server.url, "path": "website", "namespace": "acme", "overwrite": true }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    let id = answer.json["id"].as_u64().unwrap();
    let temporary = answer.json["path"].as_str().unwrap();
    let suffix = temporary
        .strip_prefix("website-")
        .expect("a temporary path");
    assert_eq!(suffix.len(), 32, "SecureRandom.hex: {temporary}");
    assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(answer.json["name"], "website");

    assert_eq!(
        wait_import(&standin, id).await.0.last().unwrap(),
        "finished"
    );
    let replaced = get(&standin, &format!("/api/v4/projects/{existing}")).await;
    assert_eq!(
        replaced.status,
        StatusCode::NOT_FOUND,
        "the old project is gone"
    );
    let by_path = get(&standin, "/api/v4/projects/acme%2Fwebsite").await;
    assert_eq!(by_path.json["id"], id, "the new one has its path");
    let listing = get(&standin, "/api/v4/groups/acme/projects?per_page=100").await;
    assert!(listing.ids().contains(&id) && !listing.ids().contains(&existing));
    assert!(standin.imports().last().unwrap().overwrite);
}

#[tokio::test]
async fn the_project_import_rate_limit_is_its_own_and_answers_429_with_retry_after() {
    let standin = start(
        Seed::demo(),
        Options {
            imports_per_window: 2,
            ..importing()
        },
    )
    .await;
    let server = ArchiveServer::start(Serving::archive(tar_gz(&[("VERSION", b"0.2.4")]))).await;
    // A refused request counts too: GitLab checks the limit before the rest.
    let taken = remote_import(
        &standin,
        json!({ "url": server.url, "path": "website", "namespace": "acme" }),
    )
    .await;
    assert_eq!(taken.status, StatusCode::BAD_REQUEST);
    let first = remote_import(
        &standin,
        json!({ "url": server.url, "path": "one", "namespace": "acme" }),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let limited = remote_import(
        &standin,
        json!({ "url": server.url, "path": "two", "namespace": "acme" }),
    )
    .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.header("retry-after"), Some("60"));
    assert_eq!(
        limited.json,
        json!({ "message": { "error": "This endpoint has been requested too many times. Try again later." } })
    );
    assert_eq!(
        server
            .methods()
            .iter()
            .filter(|m| **m == Method::HEAD)
            .count(),
        2,
        "no HEAD once limited"
    );
    let record = standin.imports().pop().unwrap();
    assert_eq!(record.status, 429);
    assert_eq!(record.head, None);
    // Exports have their own window.
    assert_eq!(
        export(&standin, "acme%2Fapi", None).await.status,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn missing_parameters_an_unknown_namespace_or_none_and_no_token_are_refused() {
    let standin = start(Seed::demo(), importing()).await;
    let answer = remote_import(&standin, json!({})).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.json,
        json!({ "error": "url is missing, path is missing" })
    );
    let answer = remote_import(&standin, json!({ "url": "https://example.com/a.tar.gz" })).await;
    assert_eq!(answer.json, json!({ "error": "path is missing" }));
    let answer = remote_import(
        &standin,
        json!({ "url": "https://example.com/a.tar.gz", "path": "x", "namespace": "acme", "overwrite": "maybe" }),
    )
    .await;
    assert_eq!(answer.json, json!({ "error": "overwrite is invalid" }));

    let answer = remote_import(
        &standin,
        json!({ "url": "https://example.com/a.tar.gz", "path": "x", "namespace": "nowhere" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.json, json!({ "message": "404 Namespace Not Found" }));
    assert_refused(
        &standin,
        json!({ "url": "https://example.com/a.tar.gz", "path": "x" }),
        "Namespace can't be blank",
    )
    .await;
    assert_refused(
        &standin,
        json!({ "url": "https://example.com/a.tar.gz", "path": "", "namespace": "acme" }),
        "Path can't be blank",
    )
    .await;

    let unauthenticated = reqwest::Client::new()
        .post(format!(
            "{}/api/v4/projects/remote-import",
            standin.base_url()
        ))
        .json(&json!({ "url": "https://example.com/a.tar.gz", "path": "x", "namespace": "acme" }))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    let statuses: Vec<u16> = standin
        .imports()
        .iter()
        .map(|record| record.status)
        .collect();
    assert_eq!(statuses, [400, 400, 400, 404, 400, 400, 401]);
    assert!(standin.imports().iter().all(|record| record.head.is_none()));
}

#[tokio::test]
async fn an_archive_that_fails_to_download_or_is_no_gzip_tar_with_version_ends_failed() {
    let standin = start(Seed::demo(), importing()).await;
    let cases: [(Serving, &str); 5] = [
        (
            Serving::archive(b"plain text, not gzip".to_vec()),
            "File compression or decompression failed. gzip: stdin: not in gzip format",
        ),
        (
            Serving::archive(tar_gz(&[("project.json", b"{}")])),
            "No such file or directory @ rb_sysopen - VERSION",
        ),
        (
            Serving::archive(tar_gz(&[("VERSION", b"0.1.8")])),
            "Import version mismatch: Required 0.2.4 but was 0.1.8",
        ),
        (
            Serving {
                get_status: StatusCode::FORBIDDEN,
                ..Serving::archive(tar_gz(&[("VERSION", b"0.2.4")]))
            },
            "unsupported response downloading fragment 403",
        ),
        (
            Serving::archive({
                let mut gzip =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut gzip, &[7; 700]).unwrap();
                gzip.finish().unwrap()
            }),
            "File compression or decompression failed. tar: This does not look like a tar archive",
        ),
    ];
    for (index, (serving, error)) in cases.into_iter().enumerate() {
        let body = serving.body.clone();
        let downloaded = serving.get_status == StatusCode::OK;
        let server = ArchiveServer::start(serving).await;
        let path = format!("broken-{index}");
        let answer = remote_import(
            &standin,
            json!({ "url": server.url, "path": path, "namespace": "acme" }),
        )
        .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
        let id = answer.json["id"].as_u64().unwrap();
        let (seen, last) = wait_import(&standin, id).await;
        assert_eq!(seen, ["scheduled", "started", "failed"], "{error}");
        assert_eq!(last["import_error"], error);
        let record = standin.imports().pop().unwrap();
        assert_eq!(record.import_status, Some(ImportStatus::Failed));
        assert_eq!(record.import_error.as_deref(), Some(error));
        if downloaded {
            assert_eq!(record.archive_sha256, Some(sha256_hex(&body)));
        } else {
            assert_eq!(record.archive_sha256, None);
        }
        // As in GitLab, the failed project stays.
        let project = get(&standin, &format!("/api/v4/projects/{id}")).await;
        assert_eq!(project.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_project_never_imported_has_import_status_none() {
    let standin = start(Seed::demo(), importing()).await;
    let id = project_id(standin.seed(), "acme/api");
    let answer = get(&standin, &format!("/api/v4/projects/{id}/import")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["id"], id);
    assert_eq!(answer.json["path_with_namespace"], "acme/api");
    assert_eq!(answer.json["import_status"], "none");
    assert_eq!(answer.json["import_error"], Value::Null);
    assert_eq!(answer.json["failed_relations"], json!([]));
    let unknown = get(&standin, "/api/v4/projects/999999/import").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(standin.import_status(id), ImportStatus::None);
}

async fn delete(standin: &Standin, project: &str) -> Answer {
    let response = reqwest::Client::new()
        .delete(format!("{}/api/v4/projects/{project}", standin.base_url()))
        .header("PRIVATE-TOKEN", TOKEN)
        .send()
        .await;
    Answer::read(response.expect("request")).await
}

#[tokio::test]
async fn delete_accepts_and_the_project_is_gone_unknown_is_404_and_a_refusal_fault_answers_403() {
    let standin = start(Seed::demo(), importing()).await;
    let id = project_id(standin.seed(), "acme/api");
    let kept = project_id(standin.seed(), "acme/docs");

    standin.set_faults(Faults {
        refuse_deletion: true,
        ..Faults::default()
    });
    let refused = delete(&standin, &kept.to_string()).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.json, json!({ "message": "403 Forbidden" }));
    assert_eq!(
        get(&standin, &format!("/api/v4/projects/{kept}"))
            .await
            .status,
        StatusCode::OK
    );
    standin.set_faults(Faults::default());

    let answer = delete(&standin, "acme%2Fapi").await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert_eq!(answer.json, json!({ "message": "202 Accepted" }));
    assert_eq!(
        get(&standin, &format!("/api/v4/projects/{id}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let listing = get(&standin, "/api/v4/groups/acme/projects?per_page=100").await;
    assert!(!listing.ids().contains(&id) && listing.ids().contains(&kept));
    let again = delete(&standin, &id.to_string()).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.json, json!({ "message": "404 Project Not Found" }));

    let deletions = standin.deletions();
    let seen: Vec<(ProjectRef, u16)> = deletions
        .iter()
        .map(|record| (record.project_id.clone(), record.status))
        .collect();
    assert_eq!(
        seen,
        [
            (ProjectRef::Known(kept), 403),
            (ProjectRef::Known(id), 202),
            (ProjectRef::Unknown(id.to_string()), 404),
        ]
    );
    let over_http = reqwest::get(format!("{}/__standin/deletions", standin.base_url()))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(over_http[1]["project_id"], id);
    assert_eq!(over_http[1]["status"], 202);
}

#[tokio::test]
async fn an_imported_project_can_be_deleted_and_its_import_stops() {
    let standin = start(
        Seed::demo(),
        Options {
            import_step_delay: Duration::from_millis(300),
            ..importing()
        },
    )
    .await;
    let server = ArchiveServer::start(Serving::archive(tar_gz(&[("VERSION", b"0.2.4")]))).await;
    let answer = remote_import(
        &standin,
        json!({ "url": server.url, "path": "doomed", "namespace": "acme" }),
    )
    .await;
    let id = answer.json["id"].as_u64().unwrap();
    assert_eq!(
        delete(&standin, &id.to_string()).await.status,
        StatusCode::ACCEPTED
    );
    standin.wait_imports_idle(IDLE_TIMEOUT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(server.methods(), [Method::HEAD], "never downloaded");
    assert_eq!(
        standin.imports()[0].import_status,
        Some(ImportStatus::Scheduled)
    );
    assert_eq!(
        get(&standin, "/api/v4/projects/acme%2Fdoomed").await.status,
        StatusCode::NOT_FOUND
    );
}
