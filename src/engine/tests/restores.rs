//! Restores: `POST /restore` admitted against the store, the settings, GitLab and the bucket
//! ([`Admission`]); the due restores moved a step a tick, the import within GitLab's limit and
//! then its status until it ends ([`Restores`]); the archive URL opened only with the one
//! restore's capability while it goes ([`archive_request`]).
//!
//! GitLab's answers are written here as GitLab sends them; the bucket is [`SimS3`], which checks
//! the signature's form and answers ranged GETs and HEADs from the objects it holds.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde_json::{json, Value};
use url::Url;

use super::sim::{config, SimS3, DAY, HOUR, MINUTE, SECOND, T0};
use crate::config::Config;
use crate::engine::restores::{
    archive_request, next_import_check, Admission, ArchiveAccess, Refusal, Restores,
    RestoresReport, IMPORTS_PER_MINUTE, IMPORT_TRIES, RESTORES_PER_TICK, RESTORE_EXPIRY,
};
use crate::engine::Event;
use crate::http::{HttpRequest, HttpResponse, HttpResult, Method};
use crate::restore::capability_matches;
use crate::store::host::HostSql;
use crate::store::{Backup, RestoreRow, RestoreState, Store};
use crate::time::ms;

/// The worker's origin, as the request for `POST /restore` came to it.
const ORIGIN: &str = "https://backup.example.workers.dev";
const GITLAB_API: &str = "https://gitlab.example.com/api/v4/";
/// 2024-01-01 02:05:30 UTC: restores are asked for then.
const ASKED: u64 = T0 + 2 * HOUR + 5 * MINUTE + 30 * SECOND;

const CLI: u64 = 11;
const CLI_PATH: &str = "acme/tools/cli";
const CLI_OLD_KEY: &str = "acme/tools/cli/2023-12-30-02-00-00.tar.gz";
const CLI_KEY: &str = "acme/tools/cli/2023-12-31-02-00-00.tar.gz";
const WEB: u64 = 12;
const WEB_KEY: &str = "acme/web/2023-12-31-02-00-00.tar.gz";
/// Another project whose full path ends like `acme/web`'s.
const OTHER_WEB: u64 = 13;
const OTHER_WEB_KEY: &str = "other/acme/web/2023-12-31-02-00-00.tar.gz";

/// A worker's store with verified backups of `acme/tools/cli` (twice: the newer one is its
/// last), `acme/web` and `other/acme/web`, its settings, and the bucket.
struct Bench {
    db: HostSql,
    config: Config,
    s3: RefCell<SimS3>,
}

/// What `POST /restore` came to: the restore and its event, or the refusal; and the requests
/// the admission sent to GitLab or the bucket.
struct Asked {
    admitted: Result<(RestoreRow, Event), Refusal>,
    sent: Vec<HttpRequest>,
}

impl Asked {
    fn row(&self) -> &RestoreRow {
        match &self.admitted {
            Ok((row, _)) => row,
            Err(refusal) => panic!("refused: {refusal:?}"),
        }
    }

    fn refusal(&self) -> (u16, Option<&'static str>) {
        match &self.admitted {
            Ok((row, _)) => panic!("admitted: {row:?}"),
            Err(refusal) => (refusal.status, refusal.field),
        }
    }
}

impl Bench {
    fn new(overrides: &[(&str, &str)]) -> Bench {
        let db = HostSql::in_memory();
        db.0.set_prepared_statement_cache_capacity(128);
        let bench = Bench {
            db,
            config: config(overrides),
            s3: RefCell::new(SimS3::default()),
        };
        let store = bench.store();
        for (project_id, path, key, at_ms) in [
            (CLI, CLI_PATH, CLI_OLD_KEY, T0 - 2 * DAY),
            (CLI, CLI_PATH, CLI_KEY, T0 - DAY),
            (WEB, "acme/web", WEB_KEY, T0 - DAY),
            (OTHER_WEB, "other/acme/web", OTHER_WEB_KEY, T0 - DAY),
        ] {
            store
                .record_backup(&Backup {
                    project_id,
                    path: path.into(),
                    key: key.into(),
                    run_id: 1,
                    at_ms,
                    size: 4_096,
                    requested_ms: None,
                })
                .unwrap();
        }
        bench
    }

    fn store(&self) -> Store<&HostSql> {
        Store::open(&self.db).expect("the store opens")
    }

    fn object_url(&self, key: &str) -> Url {
        self.config.bucket.object_url("eu-west-1", key)
    }

    /// `POST /restore` with `body` at `now`, driven as the coordinator does: GitLab's answers
    /// from `gitlab`, the bucket's from the simulated S3.
    fn ask_at(
        &self,
        body: Value,
        now: u64,
        mut gitlab: impl FnMut(&HttpRequest) -> HttpResult,
    ) -> Asked {
        let store = Store::open(&self.db).expect("the store opens");
        let origin = Url::parse(ORIGIN).unwrap();
        let mut sent = Vec::new();
        let admission = Admission::new(
            &store,
            &self.config,
            body.to_string().as_bytes(),
            &origin,
            now,
        )
        .expect("the store answers");
        let admitted = admission.and_then(|mut admission| {
            while let Some(request) = admission.next_request(now)? {
                let answer = if is_bucket(&request) {
                    Ok(self.s3.borrow_mut().serve(&request, now))
                } else {
                    gitlab(&request)
                };
                sent.push(request);
                admission.handle(answer)?;
            }
            Ok(admission
                .admit(&store, now)
                .expect("the restore is recorded"))
        });
        Asked { admitted, sent }
    }

    fn ask(&self, body: Value) -> Asked {
        self.ask_at(body, ASKED, |request| {
            panic!("an admission that asks no one sent {request:?}")
        })
    }

    fn restore(&self, id: u64) -> RestoreRow {
        self.store()
            .restore(id)
            .unwrap()
            .expect("the restore is kept")
    }

    /// One tick's restores, as the coordinator moves them: the steps, their requests sent
    /// together (`gitlab` answers each, seeing the store as it is once the steps are
    /// returned), then each answer handled.
    fn tick(
        &self,
        now: u64,
        budget: u32,
        random: &mut dyn FnMut() -> Option<[u8; 32]>,
        gitlab: &mut dyn FnMut(&Store<&HostSql>, &HttpRequest) -> HttpResult,
    ) -> (RestoresReport, Vec<HttpRequest>) {
        let store = self.store();
        let mut restores = Restores::begin(&store, &self.config, budget);
        let steps = restores.next_steps(now, random).unwrap();
        let requests: Vec<HttpRequest> = steps.iter().map(|s| s.request.clone()).collect();
        let answers: Vec<HttpResult> = requests.iter().map(|r| gitlab(&store, r)).collect();
        for (step, answer) in steps.into_iter().zip(answers) {
            restores.handle(step, answer, now).unwrap();
        }
        (restores.finish(now).unwrap(), requests)
    }
}

fn is_bucket(request: &HttpRequest) -> bool {
    request
        .url
        .host_str()
        .is_some_and(|host| host.ends_with(".amazonaws.com"))
}

/// A source of random bytes that never repeats.
fn randomness() -> impl FnMut() -> Option<[u8; 32]> {
    let mut n = 0u8;
    move || {
        n = n.wrapping_add(1);
        Some(std::array::from_fn(|i| {
            n.wrapping_mul(29) ^ (i as u8).wrapping_mul(37) ^ 0xa5
        }))
    }
}

fn json_answer(status: u16, body: Value) -> HttpResult {
    Ok(HttpResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    })
}

fn group(id: u64, full_path: &str) -> HttpResult {
    json_answer(
        200,
        json!({"id": id, "name": full_path, "path": full_path, "full_path": full_path}),
    )
}

/// GitLab's 201 to `remote-import`: the new project, as `ProjectImportStatus` has it (no
/// `web_url`).
fn created(project_id: u64, target: &str) -> HttpResult {
    json_answer(
        201,
        json!({"id": project_id, "path_with_namespace": target, "import_status": "scheduled"}),
    )
}

fn import_status(status: &str, error: Option<&str>) -> HttpResult {
    json_answer(
        200,
        json!({"id": 501, "import_status": status, "import_error": error, "failed_relations": []}),
    )
}

fn unavailable() -> HttpResult {
    Ok(HttpResponse {
        status: 503,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: b"upstream unavailable".to_vec(),
    })
}

fn is_import(request: &HttpRequest) -> bool {
    request.method == Method::Post
        && request.url.as_str() == format!("{GITLAB_API}projects/remote-import")
}

/// A look at the target's path (`GET /projects/<full path>/import`) after an import request
/// that got no definite answer.
fn is_lookup(request: &HttpRequest) -> bool {
    request.method == Method::Get && request.url.path().contains("%2F")
}

/// The form of a `remote-import` request.
fn import_form(request: &HttpRequest) -> BTreeMap<String, String> {
    assert!(is_import(request), "{request:?}");
    url::form_urlencoded::parse(request.body.as_deref().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The restore id and capability of the archive URL an import request hands GitLab.
fn archive_of(request: &HttpRequest) -> (u64, String) {
    let url = Url::parse(&import_form(request)["url"]).unwrap();
    let segments: Vec<&str> = url.path_segments().unwrap().collect();
    match segments.as_slice() {
        ["restore", "archive", id, capability] => (id.parse().unwrap(), (*capability).to_owned()),
        _ => panic!("not an archive URL: {url}"),
    }
}

fn no_gitlab(_: &Store<&HostSql>, request: &HttpRequest) -> HttpResult {
    panic!("nothing was to be sent: {request:?}")
}

// ---------------------------------------------------------------------------------------------
// Admission

#[test]
fn a_project_by_path_in_any_case_or_by_id_is_restored_from_its_newest_backup_due_at_once() {
    let bench = Bench::new(&[]);
    for project in [
        json!("ACME/Tools/CLI"),
        json!(CLI),
        json!("acme/tools/cli/"),
    ] {
        let asked = bench.ask(json!({ "project": project }));
        assert!(asked.sent.is_empty(), "its newest backup needs no question");
        let (row, event) = asked.admitted.as_ref().unwrap();
        assert_eq!(
            (row.project_id, row.project_path.as_str(), row.key.as_str()),
            (CLI, CLI_PATH, CLI_KEY),
            "{project}"
        );
        // Into its own namespace, as `<last>-restored-<YYYYMMDD-HHMM>` of the request's time.
        assert_eq!(row.namespace, "acme/tools");
        assert_eq!(row.path, "cli-restored-20240101-0205");
        assert_eq!(row.name, None);
        assert_eq!(row.state, RestoreState::Requested);
        assert_eq!(
            (row.requested_ms, row.due_ms, row.expires_ms),
            (ASKED, ASKED, ASKED + ms(RESTORE_EXPIRY))
        );
        assert_eq!((row.tries, row.sent_ms, &row.capability), (0, None, &None));
        assert_eq!(row.origin, ORIGIN);
        assert_eq!(
            *event,
            Event::RestoreRequested {
                restore: row.id,
                project: CLI_PATH.into(),
                key: CLI_KEY.into(),
                target: "acme/tools/cli-restored-20240101-0205".into(),
            }
        );
        assert_eq!(bench.restore(row.id), *row);
        let due = bench.store().due_restores(ASKED, 10).unwrap();
        assert_eq!(due.last(), Some(row), "due at once");
        assert_eq!(bench.store().next_restore_due().unwrap(), Some(ASKED));
    }
    // A path and a name asked for are kept as asked.
    let asked = bench.ask(json!({"project": "acme/web", "path": "web-copy", "name": "Web (copy)"}));
    let row = asked.row();
    assert_eq!(
        (row.key.as_str(), row.target(), row.name.as_deref()),
        (WEB_KEY, "acme/web-copy".to_owned(), Some("Web (copy)"))
    );
}

#[test]
fn a_project_without_a_verified_backup_is_refused_404_on_project_and_nothing_is_recorded() {
    let bench = Bench::new(&[]);
    for project in [json!("acme/tools"), json!("acme/tools/cl"), json!(99)] {
        let asked = bench.ask(json!({ "project": project }));
        assert_eq!(asked.refusal(), (404, Some("project")), "{project}");
    }
    assert_eq!(
        bench
            .ask(json!({"project": CLI_PATH, "overwrite": true}))
            .refusal(),
        (400, Some("body")),
        "no overwrite"
    );
    assert!(bench.store().recent_restores(10).unwrap().is_empty());
}

#[test]
fn by_default_a_restore_goes_only_into_the_backed_up_groups_or_the_projects_own_namespace() {
    let bench = Bench::new(&[("GROUPS_TO_BACKUP", "acme, 4242")]);
    for (project, namespace) in [
        (CLI_PATH, "acme"),
        (CLI_PATH, "ACME/restores/deep"),
        (CLI_PATH, "acme/tools"),
        // Its own namespace, outside the backed-up groups.
        ("other/acme/web", "other/acme"),
        ("other/acme/web", "other/acme/sub"),
    ] {
        let asked = bench.ask(json!({"project": project, "namespace": namespace}));
        assert_eq!(asked.row().namespace, namespace);
    }
    let own = bench.ask(json!({"project": "other/acme/web"}));
    assert_eq!(own.row().namespace, "other/acme");
    for (project, namespace) in [
        (CLI_PATH, "elsewhere"),
        (CLI_PATH, "acme-public"),
        (CLI_PATH, "other/acme"),
        ("other/acme/web", "other"),
    ] {
        let asked = bench.ask(json!({"project": project, "namespace": namespace}));
        assert_eq!(
            asked.refusal(),
            (403, Some("namespace")),
            "{project} into {namespace}"
        );
    }
}

#[test]
fn with_restore_namespaces_a_restore_goes_only_into_those_and_below() {
    let bench = Bench::new(&[("RESTORE_NAMESPACES", "scratch/drills, Restores")]);
    for namespace in [
        "scratch/drills",
        "scratch/drills/x",
        "restores",
        "restores/a/b",
    ] {
        let asked = bench.ask(json!({"project": CLI, "namespace": namespace}));
        assert_eq!(asked.row().namespace, namespace);
    }
    for namespace in [None, Some("acme"), Some("acme/tools"), Some("scratch")] {
        let asked = bench.ask(json!({"project": CLI, "namespace": namespace}));
        assert_eq!(asked.refusal(), (403, Some("namespace")), "{namespace:?}");
    }
    let Err(refusal) = &bench.ask(json!({"project": CLI})).admitted else {
        panic!("admitted");
    };
    assert!(
        refusal.message.contains("scratch/drills") && refusal.message.contains("acme/tools"),
        "it says where it may go: {}",
        refusal.message
    );
}

#[test]
fn a_namespace_by_id_is_asked_of_gitlab_and_the_path_it_answers_is_checked() {
    let bench = Bench::new(&[]);
    let ask = |bench: &Bench, answer: HttpResult| {
        let asked = bench.ask_at(json!({"project": CLI, "namespace": 77}), ASKED, |_| {
            answer.clone()
        });
        assert_eq!(asked.sent.len(), 1);
        let request = &asked.sent[0];
        assert_eq!(request.method, Method::Get);
        assert_eq!(
            request.url.as_str(),
            format!("{GITLAB_API}groups/77?with_projects=false")
        );
        assert!(request
            .headers
            .contains(&("PRIVATE-TOKEN", "glpat-simulated".to_owned())));
        asked
    };
    let asked = ask(&bench, group(77, "acme/restores"));
    assert_eq!(
        asked.row().target(),
        "acme/restores/cli-restored-20240101-0205"
    );
    let asked = ask(&bench, group(77, "elsewhere/acme"));
    assert_eq!(asked.refusal(), (403, Some("namespace")));
    let asked = ask(
        &bench,
        json_answer(404, json!({"message": "404 Group Not Found"})),
    );
    assert_eq!(asked.refusal(), (404, Some("namespace")));
    let asked = ask(&bench, Err("connection reset".into()));
    assert_eq!(asked.refusal().0, 502);
    assert_eq!(bench.store().recent_restores(10).unwrap().len(), 1);
}

#[test]
fn an_explicit_key_of_another_project_is_refused_400_on_backup_without_asking_the_bucket() {
    let bench = Bench::new(&[]);
    for (project, key) in [
        (CLI, WEB_KEY),
        (CLI, "acme/tools/2023-12-31-02-00-00.tar.gz"),
        (CLI, "acme/tools/cli/old/2023-12-31-02-00-00.tar.gz"),
        (WEB, OTHER_WEB_KEY),
        (WEB, "acme/acme/web/2023-12-31-02-00-00.tar.gz"),
        (OTHER_WEB, WEB_KEY),
    ] {
        let asked = bench.ask(json!({"project": project, "backup": key}));
        assert_eq!(asked.refusal(), (400, Some("backup")), "{project}: {key}");
        assert!(asked.sent.is_empty());
    }
    assert!(bench.s3.borrow().ranged_gets.is_empty());
}

#[test]
fn an_explicit_key_of_the_project_is_read_from_the_bucket_and_admitted_only_as_an_archive() {
    let bench = Bench::new(&[]);
    let body = json!({"project": CLI_PATH, "backup": CLI_OLD_KEY});
    // Not in the bucket.
    let asked = bench.ask(body.clone());
    assert_eq!(asked.refusal(), (404, Some("backup")));
    assert_eq!(asked.sent.len(), 1);
    let request = &asked.sent[0];
    assert_eq!(request.method, Method::Get);
    assert_eq!(request.url, bench.object_url(CLI_OLD_KEY));
    assert!(request.headers.contains(&("range", "bytes=0-7".to_owned())));
    assert!(request
        .headers
        .iter()
        .any(|(name, _)| *name == "authorization"));
    // There, but no archive: a JSON object, or one sent as gzip that is a zip file.
    let url = bench.object_url(CLI_OLD_KEY);
    let upload = crate::s3::presign(
        Method::Put,
        &url,
        &bench.config.credentials,
        "eu-west-1",
        crate::time::system_time(T0),
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    bench.s3.borrow_mut().upload_as(
        &upload,
        4_096,
        b"PK\x03\x04\x14\0\0\0",
        Some("application/gzip"),
        T0,
    );
    assert_eq!(bench.ask(body.clone()).refusal(), (400, Some("backup")));
    bench
        .s3
        .borrow_mut()
        .put_foreign_body(&url, r#"{"not": "an archive"}"#, T0);
    assert_eq!(bench.ask(body.clone()).refusal(), (400, Some("backup")));
    // Refused by the bucket.
    bench.s3.borrow_mut().put_foreign(&url, 4_096, T0);
    bench.s3.borrow_mut().object_status = Some(403);
    assert_eq!(bench.ask(body.clone()).refusal(), (502, Some("backup")));
    bench.s3.borrow_mut().object_status = None;
    // An archive: admitted with that key.
    let asked = bench.ask(body.clone());
    assert_eq!(asked.row().key, CLI_OLD_KEY);
    assert_eq!(asked.sent.len(), 1);
    let statuses: Vec<u16> = bench.s3.borrow().ranged_gets.iter().map(|g| g.2).collect();
    assert_eq!(statuses, [404, 206, 206, 403, 206]);
    // The newest key named is the newest backup: nothing to ask.
    let asked = bench.ask(json!({"project": CLI_PATH, "backup": CLI_KEY}));
    assert_eq!((asked.row().key.as_str(), asked.sent.len()), (CLI_KEY, 0));
}

#[test]
fn with_an_s3_prefix_a_key_under_it_or_from_before_it_is_the_projects() {
    let bench = Bench::new(&[("S3_PREFIX", "gitlab")]);
    let time = "2023-12-29-02-00-00.tar.gz";
    for key in [
        format!("gitlab/{CLI_PATH}/{time}"),
        format!("gitlab/ACME/tools/cli/{time}"),
        format!("{CLI_PATH}/{time}"),
    ] {
        bench
            .s3
            .borrow_mut()
            .put_foreign(&bench.object_url(&key), 4_096, T0);
        assert_eq!(
            bench.ask(json!({"project": CLI, "backup": key})).row().key,
            key
        );
    }
    for key in [
        format!("other/{CLI_PATH}/{time}"),
        format!("gitlab/other/{CLI_PATH}/{time}"),
        format!("gitlab/acme/tools/{time}"),
    ] {
        let asked = bench.ask(json!({"project": CLI, "backup": key}));
        assert_eq!(asked.refusal(), (400, Some("backup")), "{key}");
        let Err(refusal) = asked.admitted else {
            unreachable!()
        };
        assert!(
            refusal.message.contains("\"gitlab/acme/tools/cli/\""),
            "{}",
            refusal.message
        );
    }
}

#[test]
fn a_namespace_by_id_and_a_key_are_both_asked_the_namespace_first() {
    let bench = Bench::new(&[]);
    let url = bench.object_url(CLI_OLD_KEY);
    bench.s3.borrow_mut().put_foreign(&url, 4_096, T0);
    let body = json!({"project": CLI, "backup": CLI_OLD_KEY, "namespace": 77});
    let asked = bench.ask_at(body.clone(), ASKED, |_| group(77, "acme/restores"));
    assert_eq!(asked.row().namespace, "acme/restores");
    assert_eq!(asked.sent.len(), 2);
    assert!(!is_bucket(&asked.sent[0]) && is_bucket(&asked.sent[1]));
    // A namespace refused: the bucket is not asked.
    let asked = bench.ask_at(body, ASKED, |_| group(77, "elsewhere"));
    assert_eq!(
        (asked.refusal(), asked.sent.len()),
        ((403, Some("namespace")), 1)
    );
}

// ---------------------------------------------------------------------------------------------
// Ticks: the import, then its status

#[test]
fn a_due_restore_sends_its_import_with_a_capability_claimed_before_the_request_is_returned() {
    let bench = Bench::new(&[]);
    let body = json!({"project": CLI, "namespace": "acme/restores", "path": "cli-copy",
                      "name": "CLI (copy)"});
    let id = bench.ask(body).row().id;
    let now = ASKED + 200;
    let mut seen = 0;
    let (report, sent) = bench.tick(now, 50, &mut randomness(), &mut |store, request| {
        // The claim is in the store while the request is on its way.
        let row = store.restore(id).unwrap().unwrap();
        assert_eq!(
            (row.state, row.sent_ms, row.tries),
            (RestoreState::Requested, Some(now), 1)
        );
        let (restore, capability) = archive_of(request);
        assert_eq!(restore, id);
        assert!(capability_matches(
            &capability,
            row.capability.as_deref().unwrap()
        ));
        seen += 1;
        created(501, "acme/restores/cli-copy")
    });
    assert_eq!((seen, sent.len(), report.subrequests), (1, 1, 1));
    let form = import_form(&sent[0]);
    let (_, capability) = archive_of(&sent[0]);
    assert_eq!(
        form["url"],
        format!("{ORIGIN}/restore/archive/{id}/{capability}")
    );
    assert!(capability.len() == 64 && capability.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        form.keys().map(String::as_str).collect::<Vec<_>>(),
        ["name", "namespace", "path", "url"],
        "never overwrite"
    );
    assert_eq!(
        (
            form["namespace"].as_str(),
            form["path"].as_str(),
            form["name"].as_str()
        ),
        ("acme/restores", "cli-copy", "CLI (copy)")
    );
    assert!(sent[0]
        .headers
        .contains(&("PRIVATE-TOKEN", "glpat-simulated".to_owned())));
    // The store keeps only the capability's digest.
    let row = bench.restore(id);
    assert!(!row.capability.as_deref().unwrap().contains(&capability));
    assert!(!serde_json::to_string(&row).unwrap().contains(&capability));
}

#[test]
fn each_send_makes_a_new_capability_and_only_the_latest_opens_the_archive() {
    let bench = Bench::new(&[]);
    let id = bench.ask(json!({"project": CLI})).row().id;
    let mut random = randomness();
    let mut capabilities = Vec::new();
    let mut now = ASKED;
    for _ in 0..3 {
        let mut gitlab = |_: &Store<&HostSql>, request: &HttpRequest| {
            if is_lookup(request) {
                json_answer(404, json!({"message": "404 Project Not Found"}))
            } else {
                unavailable()
            }
        };
        let (_, mut sent) = bench.tick(now, 50, &mut random, &mut gitlab);
        if sent.iter().all(is_lookup) {
            // After the 5xx, the lookup came first (no project): then the import.
            sent = bench.tick(now, 50, &mut random, &mut gitlab).1;
        }
        assert_eq!(sent.len(), 1);
        capabilities.push(archive_of(&sent[0]).1);
        let row = bench.restore(id);
        assert_eq!(row.state, RestoreState::Requested);
        let digest = row.capability.unwrap();
        for (n, capability) in capabilities.iter().enumerate() {
            assert_eq!(
                capability_matches(capability, &digest),
                n == capabilities.len() - 1,
                "capability {n} of {}",
                capabilities.len()
            );
        }
        now = bench.restore(id).due_ms.max(now + MINUTE);
    }
    assert_eq!(bench.restore(id).tries, 3);
    let distinct: std::collections::BTreeSet<&String> = capabilities.iter().collect();
    assert_eq!(distinct.len(), 3);
}

#[test]
fn an_accepted_import_is_checked_until_it_finishes() {
    let bench = Bench::new(&[]);
    let body = json!({"project": CLI, "namespace": "acme/restores", "path": "cli-copy"});
    let id = bench.ask(body).row().id;
    let sent_at = ASKED;
    let (_, sent) = bench.tick(sent_at, 50, &mut randomness(), &mut |_, _| {
        created(501, "acme/restores/cli-copy")
    });
    assert_eq!(sent.len(), 1);
    let row = bench.restore(id);
    assert_eq!(
        (row.state, row.new_project_id, row.web_url.as_deref()),
        (
            RestoreState::Importing,
            Some(501),
            Some("https://gitlab.example.com/acme/restores/cli-copy")
        )
    );
    assert_eq!(row.due_ms, sent_at + 5 * SECOND);
    // Early on, looked at every 5 s; later, less often.
    let mut now = row.due_ms;
    for (status, age, wait) in [
        ("scheduled", 5 * SECOND, 5 * SECOND),
        ("started", 30 * SECOND, 5 * SECOND),
        ("started", 2 * MINUTE, 30 * SECOND),
        ("started", 20 * MINUTE, MINUTE),
    ] {
        now = now.max(sent_at + age);
        let (report, sent) = bench.tick(now, 50, &mut randomness(), &mut |_, request| {
            assert_eq!(request.method, Method::Get);
            assert_eq!(
                request.url.as_str(),
                format!("{GITLAB_API}projects/501/import")
            );
            import_status(status, None)
        });
        assert_eq!(sent.len(), 1);
        let row = bench.restore(id);
        assert_eq!(row.state, RestoreState::Importing, "{status} at {age}");
        assert_eq!(row.due_ms, now + wait, "{status} at {age} ms");
        assert_eq!(report.wake_at_ms, Some(row.due_ms));
        assert!(report.events.is_empty());
        assert_eq!(
            ms(next_import_check(std::time::Duration::from_millis(
                now - sent_at
            ))),
            wait
        );
        // Not due yet: nothing to send.
        let (_, sent) = bench.tick(row.due_ms - 1, 50, &mut randomness(), &mut no_gitlab);
        assert!(sent.is_empty());
    }
    now = bench.restore(id).due_ms;
    let (report, _) = bench.tick(now, 50, &mut randomness(), &mut |_, _| {
        import_status("finished", None)
    });
    let row = bench.restore(id);
    assert_eq!(
        (row.state, row.finished_ms, row.error),
        (RestoreState::Finished, Some(now), None)
    );
    assert_eq!(
        report.events,
        [Event::RestoreFinished {
            restore: id,
            project: CLI_PATH.into(),
            target: "acme/restores/cli-copy".into(),
            new_project_id: 501,
            web_url: "https://gitlab.example.com/acme/restores/cli-copy".into(),
        }]
    );
    assert_eq!(report.wake_at_ms, None);
    let (_, sent) = bench.tick(now + DAY, 50, &mut randomness(), &mut no_gitlab);
    assert!(sent.is_empty(), "an ended restore is not looked at again");
}

#[test]
fn the_web_url_gitlab_answers_is_kept() {
    let bench = Bench::new(&[]);
    let id = bench.ask(json!({"project": CLI})).row().id;
    bench.tick(ASKED, 50, &mut randomness(), &mut |_, _| {
        json_answer(
            201,
            json!({"id": 600, "web_url": "https://git.example.org/x/y"}),
        )
    });
    assert_eq!(
        bench.restore(id).web_url.as_deref(),
        Some("https://git.example.org/x/y")
    );
}

#[test]
fn a_failed_import_fails_the_restore_with_gitlabs_reason() {
    let bench = Bench::new(&[]);
    let id = bench.ask(json!({"project": CLI})).row().id;
    bench.tick(ASKED, 50, &mut randomness(), &mut |_, _| created(501, "x"));
    let now = bench.restore(id).due_ms;
    let (report, _) = bench.tick(now, 50, &mut randomness(), &mut |_, _| {
        import_status(
            "failed",
            Some("Error importing repository: corrupt archive"),
        )
    });
    let row = bench.restore(id);
    assert_eq!(
        (row.state, row.finished_ms),
        (RestoreState::Failed, Some(now))
    );
    let reason = row.error.unwrap();
    assert!(
        reason.contains("Error importing repository: corrupt archive"),
        "{reason}"
    );
    assert_eq!(
        report.events,
        [Event::RestoreFailed {
            restore: id,
            project: CLI_PATH.into(),
            target: row.namespace.clone() + "/" + &row.path,
            reason,
        }]
    );
    assert_eq!(report.wake_at_ms, None);
}

#[test]
fn a_new_project_gone_before_its_import_ended_fails_the_restore() {
    let bench = Bench::new(&[]);
    let id = bench.ask(json!({"project": CLI})).row().id;
    bench.tick(ASKED, 50, &mut randomness(), &mut |_, _| created(501, "x"));
    let now = bench.restore(id).due_ms;
    let (report, _) = bench.tick(now, 50, &mut randomness(), &mut |_, _| {
        json_answer(404, json!({"message": "404 Project Not Found"}))
    });
    assert_eq!(bench.restore(id).state, RestoreState::Failed);
    assert!(matches!(report.events[..], [Event::RestoreFailed { .. }]));
}

#[test]
fn a_taken_path_fails_the_restore_with_gitlabs_message_at_once() {
    let bench = Bench::new(&[]);
    let id = bench.ask(json!({"project": CLI, "path": "cli"})).row().id;
    let (report, sent) = bench.tick(ASKED, 50, &mut randomness(), &mut |_, _| {
        json_answer(400, json!({"message": "Path has already been taken"}))
    });
    assert_eq!(sent.len(), 1);
    let row = bench.restore(id);
    assert_eq!((row.state, row.tries), (RestoreState::Failed, 1));
    let reason = row.error.unwrap();
    assert!(reason.contains("Path has already been taken"), "{reason}");
    assert!(matches!(
        &report.events[..],
        [Event::RestoreFailed { restore, reason: r, .. }] if *restore == id && *r == reason
    ));
    let (_, sent) = bench.tick(ASKED + DAY, 50, &mut randomness(), &mut no_gitlab);
    assert!(sent.is_empty(), "a refused import is not sent again");
}

#[test]
fn a_429_waits_for_its_retry_after_and_keeps_the_restore_requested() {
    let bench = Bench::new(&[]);
    let id = bench.ask(json!({"project": CLI})).row().id;
    bench.tick(ASKED, 50, &mut randomness(), &mut |_, _| {
        Ok(HttpResponse {
            status: 429,
            headers: vec![("retry-after".into(), "150".into())],
            body: b"Retry later".to_vec(),
        })
    });
    let row = bench.restore(id);
    assert_eq!(
        (row.state, row.due_ms, row.tries),
        (RestoreState::Requested, ASKED + 150 * SECOND, 0),
        "a 429 uses no try"
    );
    assert!(row.error.is_some());
    let (_, sent) = bench.tick(row.due_ms - 1, 50, &mut randomness(), &mut no_gitlab);
    assert!(sent.is_empty(), "not before Retry-After");
    // However often the limit turns it away (the user's other imports count too), it waits.
    let mut now = row.due_ms;
    for _ in 0..2 * IMPORT_TRIES {
        bench.tick(now, 50, &mut randomness(), &mut |_, _| {
            Ok(HttpResponse {
                status: 429,
                headers: vec![("retry-after".into(), "60".into())],
                body: b"Retry later".to_vec(),
            })
        });
        let row = bench.restore(id);
        assert_eq!((row.state, row.tries), (RestoreState::Requested, 0));
        now = row.due_ms;
    }
    let row = bench.restore(id);
    let (_, sent) = bench.tick(row.due_ms, 50, &mut randomness(), &mut |_, _| {
        created(501, "x")
    });
    assert_eq!(sent.len(), 1);
    assert_eq!(bench.restore(id).state, RestoreState::Importing);
}

#[test]
fn without_an_answer_an_import_is_sent_again_later_until_its_tries_run_out() {
    let bench = Bench::new(&[]);
    let id = bench.ask(json!({"project": CLI})).row().id;
    let answers: [fn() -> HttpResult; 3] = [
        unavailable,
        || Err("connection reset by peer".into()),
        || json_answer(502, json!({"message": "Bad Gateway"})),
    ];
    let mut now = ASKED;
    let mut sends = 0;
    let mut last_error = String::new();
    let mut last_report = None;
    for _ in 0..100 {
        if bench.restore(id).state != RestoreState::Requested {
            break;
        }
        // After an answer that never came, GitLab is asked first whether the project is there
        // (it is not).
        let (report, sent) = bench.tick(now, 50, &mut randomness(), &mut |_, request| {
            if is_import(request) {
                answers[sends % answers.len()]()
            } else {
                assert!(request.url.as_str().ends_with("/import"), "{request:?}");
                json_answer(404, json!({"message": "404 Project Not Found"}))
            }
        });
        let row = bench.restore(id);
        if sent.iter().any(is_import) {
            sends += 1;
            assert_eq!(row.tries, sends as u64);
            last_error = row.error.clone().unwrap();
            // Until due, nothing goes out.
            let (_, sent) = bench.tick(row.due_ms - 1, 50, &mut randomness(), &mut no_gitlab);
            assert!(sent.is_empty());
        }
        if row.state == RestoreState::Requested {
            // A lookup that found nothing sends again at once; a send waits.
            assert!(row.due_ms > now || !sent.iter().any(is_import), "it waits");
            assert_eq!(report.wake_at_ms, Some(row.due_ms));
            now = row.due_ms;
        }
        last_report = Some(report);
    }
    assert_eq!(sends, IMPORT_TRIES as usize);
    assert!(last_error.contains("did not answer"), "{last_error}");
    let row = bench.restore(id);
    assert_eq!((row.state, row.tries), (RestoreState::Failed, IMPORT_TRIES));
    let reason = row.error.unwrap();
    assert!(
        reason.contains(&format!("{IMPORT_TRIES} tries")) && reason.contains(&last_error),
        "{reason}"
    );
    let report = last_report.unwrap();
    assert!(matches!(&report.events[..], [Event::RestoreFailed { reason: r, .. }] if *r == reason));
    assert_eq!(report.wake_at_ms, None);
}

/// Asks for `count` restores of `acme/tools/cli` (paths `cli-<n>`) at `now`: their ids.
fn ask_many(bench: &Bench, count: usize, first: usize, now: u64) -> Vec<u64> {
    (first..first + count)
        .map(|n| {
            let body = json!({"project": CLI, "path": format!("cli-{n}")});
            bench.ask_at(body, now, |r| panic!("{r:?}")).row().id
        })
        .collect()
}

/// The most imports sent in any 60 s (`[t, t + 60 s)`), of the times they were sent.
fn most_in_a_minute(sends: &[u64]) -> usize {
    sends
        .iter()
        .map(|&start| {
            sends
                .iter()
                .filter(|&&t| t >= start && t < start + MINUTE)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// GitLab as the ticks meet it: each import is answered by `import` (with the restore's id
/// and how many imports of it came before), each status check `finished`. The times imports
/// were sent, by restore.
struct Imports {
    sent: BTreeMap<u64, Vec<u64>>,
}

impl Imports {
    fn run(
        bench: &Bench,
        from: u64,
        until: u64,
        step: u64,
        mut import: impl FnMut(u64, usize) -> HttpResult,
        mut between: impl FnMut(u64),
    ) -> Imports {
        let mut sent: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut random = randomness();
        let mut now = from;
        while now < until {
            between(now);
            let (report, requests) = bench.tick(now, 50, &mut random, &mut |_, request| {
                if is_import(request) {
                    let (id, _) = archive_of(request);
                    let before = sent.get(&id).map_or(0, Vec::len);
                    sent.entry(id).or_default().push(now);
                    import(id, before)
                } else if is_lookup(request) {
                    // After a 5xx: GitLab made no project.
                    json_answer(404, json!({"message": "404 Project Not Found"}))
                } else {
                    import_status("finished", None)
                }
            });
            assert!(requests.len() as u64 <= RESTORES_PER_TICK);
            assert_eq!(report.subrequests as usize, requests.len());
            now += step;
        }
        Imports { sent }
    }

    fn all(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self.sent.values().flatten().copied().collect();
        all.sort_unstable();
        all
    }
}

#[test]
fn never_more_than_six_imports_in_any_minute_for_eight_restores_asked_at_once() {
    let bench = Bench::new(&[]);
    let ids = ask_many(&bench, 8, 1, ASKED);
    let imports = Imports::run(
        &bench,
        ASKED,
        ASKED + 5 * MINUTE,
        SECOND,
        |id, _| created(500 + id, "x"),
        |_| {},
    );
    let all = imports.all();
    assert_eq!(all.len(), 8, "each sent once: {:?}", imports.sent);
    assert_eq!(most_in_a_minute(&all) as u64, IMPORTS_PER_MINUTE, "{all:?}");
    // The limit is used, not wasted: six at once, the other two a minute later.
    assert_eq!(all.iter().filter(|&&t| t < ASKED + 2 * SECOND).count(), 6);
    assert!(
        all[6] >= ASKED + MINUTE && all[7] < ASKED + 2 * MINUTE,
        "{all:?}"
    );
    for id in ids {
        assert_eq!(bench.restore(id).state, RestoreState::Finished);
    }
}

#[test]
fn imports_sent_again_after_failures_still_count_toward_six_a_minute() {
    let bench = Bench::new(&[]);
    let mut ids = ask_many(&bench, 1, 1, ASKED);
    // Each restore's first two imports get a 503; five more restores come 31 s after the first.
    let imports = Imports::run(
        &bench,
        ASKED,
        ASKED + 15 * MINUTE,
        SECOND,
        |id, before| {
            if before < 2 {
                unavailable()
            } else {
                created(500 + id, "x")
            }
        },
        |now| {
            if now == ASKED + 31 * SECOND {
                ids.extend(ask_many(&bench, 5, 2, now));
            }
        },
    );
    let all = imports.all();
    assert_eq!(all.len(), 3 * 6, "{:?}", imports.sent);
    assert!(
        most_in_a_minute(&all) as u64 <= IMPORTS_PER_MINUTE,
        "{} in a minute: {:?}",
        most_in_a_minute(&all),
        imports.sent
    );
    for id in ids {
        assert_eq!(bench.restore(id).state, RestoreState::Finished);
    }
}

#[test]
fn a_tick_moves_at_most_restores_per_tick_and_never_more_than_its_budget() {
    // A budget of 0 still moves one: restores are never held back forever.
    for (budget, steps) in [(50, RESTORES_PER_TICK), (2, 2), (1, 1), (0, 1)] {
        let bench = Bench::new(&[]);
        let ids = ask_many(&bench, 5, 1, ASKED);
        let store = bench.store();
        let mut restores = Restores::begin(&store, &bench.config, budget);
        let mut random = randomness();
        let first = restores.next_steps(ASKED, &mut random).unwrap();
        assert_eq!(first.len() as u64, steps, "budget {budget}");
        // One batch a tick.
        assert!(restores.next_steps(ASKED, &mut random).unwrap().is_empty());
        drop(first);
        let report = restores.finish(ASKED).unwrap();
        assert_eq!(u64::from(report.subrequests), steps);
        // Only the restores sent were claimed.
        let claimed = ids
            .iter()
            .filter(|&&id| bench.restore(id).sent_ms.is_some())
            .count();
        assert_eq!(claimed as u64, steps, "budget {budget}");
        assert_eq!(report.wake_at_ms, Some(ASKED), "the others are still due");
    }
}

#[test]
fn a_restore_that_did_not_end_in_time_fails() {
    let bench = Bench::new(&[]);
    let importing = ask_many(&bench, 1, 1, ASKED)[0];
    bench.tick(ASKED, 50, &mut randomness(), &mut |_, _| created(501, "x"));
    // Asked for later; its import does not go out (no random bytes for its capability).
    let requested = ask_many(&bench, 1, 2, ASKED + MINUTE)[0];
    let mut now = ASKED + HOUR;
    let mut checks = 0;
    while now < ASKED + ms(RESTORE_EXPIRY) {
        let (report, _) = bench.tick(now, 50, &mut || None, &mut |_, request| {
            assert!(!is_import(request));
            checks += 1;
            import_status("started", None)
        });
        assert!(report.events.is_empty());
        now += HOUR;
    }
    assert_eq!(checks, 24, "checked until it expires");
    assert_eq!(bench.restore(requested).state, RestoreState::Requested);
    now = ASKED + ms(RESTORE_EXPIRY);
    let (report, sent) = bench.tick(now, 50, &mut || None, &mut no_gitlab);
    assert!(sent.is_empty());
    assert_eq!(
        bench.restore(requested).state,
        RestoreState::Requested,
        "not yet"
    );
    let (more, sent) = bench.tick(now + MINUTE, 50, &mut randomness(), &mut no_gitlab);
    assert!(sent.is_empty());
    for (id, at) in [(importing, now), (requested, now + MINUTE)] {
        let row = bench.restore(id);
        assert_eq!(
            (row.state, row.finished_ms),
            (RestoreState::Failed, Some(at))
        );
        assert!(row.error.unwrap().contains("25 h"));
    }
    for report in [&report, &more] {
        assert!(matches!(report.events[..], [Event::RestoreFailed { .. }]));
    }
    assert_eq!(more.wake_at_ms, None);
}

#[test]
fn without_random_bytes_no_import_is_sent_and_the_restore_waits() {
    let bench = Bench::new(&[]);
    let id = bench.ask(json!({"project": CLI})).row().id;
    let (report, sent) = bench.tick(ASKED, 50, &mut || None, &mut no_gitlab);
    assert!(sent.is_empty());
    let row = bench.restore(id);
    assert_eq!(
        (row.state, row.tries, row.sent_ms, row.capability),
        (RestoreState::Requested, 0, None, None)
    );
    assert!(row.due_ms > ASKED);
    assert_eq!(report.wake_at_ms, Some(row.due_ms));
    assert!(row.error.unwrap().contains("random"));
    let (_, sent) = bench.tick(row.due_ms, 50, &mut randomness(), &mut |_, _| {
        created(501, "x")
    });
    assert_eq!(sent.len(), 1);
    assert_eq!(bench.restore(id).state, RestoreState::Importing);
}

#[test]
fn gitlabs_backoff_holds_the_imports_back() {
    let bench = Bench::new(&[]);
    let id = bench.ask(json!({"project": CLI})).row().id;
    let until = ASKED + 5 * MINUTE;
    bench
        .store()
        .set_meta(crate::store::MetaKey::GitLabBackoffUntil, until)
        .unwrap();
    let (_, sent) = bench.tick(ASKED, 50, &mut randomness(), &mut no_gitlab);
    assert!(sent.is_empty());
    assert_eq!(bench.restore(id).due_ms, until);
    let (_, sent) = bench.tick(until, 50, &mut randomness(), &mut |_, _| created(501, "x"));
    assert_eq!(sent.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// The archive URL

/// What the archive route does at `now` for restore `id` with `capability`, for a `method`.
fn open(bench: &Bench, id: u64, capability: &str, method: Method, now: u64) -> ArchiveAccess {
    archive_request(&bench.store(), &bench.config, id, capability, method, now).unwrap()
}

/// A restore of `acme/tools/cli`, its import sent (answered by `answer`): its id and capability.
fn sent_restore(bench: &Bench, answer: HttpResult) -> (u64, String) {
    let id = bench.ask(json!({"project": CLI})).row().id;
    let mut capability = None;
    bench.tick(ASKED, 50, &mut randomness(), &mut |_, request| {
        capability = Some(archive_of(request).1);
        answer.clone()
    });
    (id, capability.unwrap())
}

fn assert_opens(bench: &Bench, id: u64, capability: &str, now: u64) {
    let url = bench.object_url(CLI_KEY);
    bench.s3.borrow_mut().put_foreign(&url, 4_096, T0);
    for method in [Method::Head, Method::Get] {
        let ArchiveAccess::Open(request) = open(bench, id, capability, method, now) else {
            panic!("{method:?} refused");
        };
        assert_eq!((request.method, &request.url), (method, &url));
        assert!(request.headers.iter().any(|(n, _)| *n == "authorization"));
        assert!(!request.url.as_str().contains(capability));
        if method == Method::Head {
            // The bucket takes it.
            assert_eq!(bench.s3.borrow_mut().serve(&request, now).status, 200);
        }
    }
}

#[test]
fn the_archive_opens_with_its_capability_while_the_import_is_sent_and_while_it_imports() {
    let bench = Bench::new(&[]);
    let id = bench.ask(json!({"project": CLI})).row().id;
    let mut capability = None;
    bench.tick(ASKED, 50, &mut randomness(), &mut |_, request| {
        // GitLab checks the URL while the import request is under way.
        let (_, sent) = archive_of(request);
        assert_opens(&bench, id, &sent, ASKED + 100);
        capability = Some(sent);
        created(501, "x")
    });
    assert_eq!(bench.restore(id).state, RestoreState::Importing);
    assert_opens(&bench, id, &capability.unwrap(), ASKED + HOUR);
}

/// Refusals name no secret: not the capability, nor its digest.
fn assert_refused(access: ArchiveAccess, status: u16, capability: &str, digest: &str) {
    match access {
        ArchiveAccess::Refused(refused, message) => {
            assert_eq!(refused, status, "{message}");
            assert!(
                !message.contains(capability) && !message.contains(digest),
                "{message}"
            );
        }
        ArchiveAccess::Open(request) => panic!("opened: {request:?}"),
    }
}

#[test]
fn a_wrong_or_missing_capability_or_an_unknown_restore_is_404() {
    let bench = Bench::new(&[]);
    let (id, capability) = sent_restore(&bench, created(501, "x"));
    let digest = bench.restore(id).capability.unwrap();
    let unsent = bench.ask(json!({"project": CLI})).row().id;
    let wrong = "ab".repeat(32);
    let now = ASKED + MINUTE;
    for (restore, presented) in [
        (id, wrong.as_str()),
        (id, ""),
        (id, &capability.to_ascii_uppercase()),
        (id, &capability[..63]),
        (id, &digest),
        (unsent, capability.as_str()),
        (unsent, ""),
        (unsent + 100, capability.as_str()),
    ] {
        for method in [Method::Head, Method::Get] {
            let access = open(&bench, restore, presented, method, now);
            assert_refused(access, 404, &capability, &digest);
        }
    }
    assert!(matches!(
        open(&bench, id, &capability, Method::Get, now),
        ArchiveAccess::Open(_)
    ));
}

#[test]
fn an_ended_or_expired_restore_no_longer_opens_410() {
    let bench = Bench::new(&[]);
    // Finished.
    let (finished, finished_capability) = sent_restore(&bench, created(501, "x"));
    let due = bench.restore(finished).due_ms;
    bench.tick(due, 50, &mut randomness(), &mut |_, _| {
        import_status("finished", None)
    });
    // Refused by GitLab.
    let (failed, failed_capability) = sent_restore(
        &bench,
        json_answer(400, json!({"message": "Path has already been taken"})),
    );
    // Still importing, but expired.
    let (expiring, expiring_capability) = sent_restore(&bench, created(503, "z"));
    let expires = bench.restore(expiring).expires_ms;
    assert_eq!(bench.restore(finished).state, RestoreState::Finished);
    assert_eq!(bench.restore(failed).state, RestoreState::Failed);
    assert_eq!(bench.restore(expiring).state, RestoreState::Importing);
    for (id, capability, now) in [
        (finished, &finished_capability, due),
        (failed, &failed_capability, ASKED),
        (expiring, &expiring_capability, expires),
        (expiring, &expiring_capability, expires + DAY),
    ] {
        let digest = bench.restore(id).capability.unwrap();
        for method in [Method::Head, Method::Get] {
            assert_refused(
                open(&bench, id, capability, method, now),
                410,
                capability,
                &digest,
            );
            // A wrong capability learns nothing about the restore.
            assert_refused(
                open(&bench, id, &"0".repeat(64), method, now),
                404,
                capability,
                &digest,
            );
        }
    }
    assert!(matches!(
        open(
            &bench,
            expiring,
            &expiring_capability,
            Method::Head,
            expires - 1
        ),
        ArchiveAccess::Open(_)
    ));
}

// ---------------------------------------------------------------------------------------------
// Restore drills

const DRILLS: &[(&str, &str)] = &[
    ("RESTORE_DRILL_NAMESPACE", "scratch/drills"),
    ("WORKER_URL", ORIGIN),
];

/// GitLab as a drill meets it: the import created as project 501, its status `finished` (or
/// `failed` with `error`), and the scratch project's deletion answered `deleted`.
fn drill_gitlab(
    error: Option<&'static str>,
    deleted: u16,
) -> impl FnMut(&Store<&HostSql>, &HttpRequest) -> HttpResult {
    move |_, request| match request.method {
        Method::Post => {
            let form = import_form(request);
            created(501, &format!("{}/{}", form["namespace"], form["path"]))
        }
        Method::Get => match error {
            None => import_status("finished", None),
            Some(error) => import_status("failed", Some(error)),
        },
        Method::Delete => {
            assert_eq!(request.url.as_str(), format!("{GITLAB_API}projects/501"));
            json_answer(
                deleted,
                json!({"message": if deleted == 202 { "202 Accepted" } else { "403 Forbidden" }}),
            )
        }
        _ => panic!("a drill sent {request:?}"),
    }
}

#[test]
fn a_drill_imports_the_backup_never_drilled_into_the_scratch_group_records_it_passed_and_deletes_it(
) {
    let bench = Bench::new(DRILLS);
    let mut gitlab = drill_gitlab(None, 202);
    let (report, sent) = bench.tick(ASKED, 50, &mut randomness(), &mut gitlab);
    // The first in turn by project id: acme/tools/cli's newest backup.
    assert_eq!(sent.len(), 1);
    let form = import_form(&sent[0]);
    assert_eq!(form["namespace"], "scratch/drills");
    assert_eq!(form["path"], "cli-drill-20240101-0205");
    assert!(form["url"].starts_with(&format!("{ORIGIN}/restore/archive/")));
    let id = archive_of(&sent[0]).0;
    assert!(matches!(&report.events[..], [Event::DrillStarted { key, .. }] if key == CLI_KEY));
    let row = bench.restore(id);
    assert!(row.drill && row.state == RestoreState::Importing);
    // The import finishes: passed on that backup, then the scratch project is deleted.
    let now = row.due_ms;
    let (report, _) = bench.tick(now, 50, &mut randomness(), &mut gitlab);
    assert!(matches!(&report.events[..], [Event::DrillPassed { key, .. }] if key == CLI_KEY));
    assert_eq!(bench.restore(id).state, RestoreState::Cleaning);
    assert_eq!(report.wake_at_ms, Some(now), "the deletion goes at once");
    let drills = bench.store().drills().unwrap();
    assert_eq!((drills.passed, drills.failed), (1, 0));
    let (report, sent) = bench.tick(now, 50, &mut randomness(), &mut gitlab);
    assert_eq!(sent[0].method, Method::Delete);
    assert!(report.events.is_empty());
    let row = bench.restore(id);
    assert_eq!((row.state, row.error), (RestoreState::Finished, None));
    // The next drill waits RESTORE_DRILL_EVERY_DAYS (7) from this one's start, then takes the
    // next backup in turn.
    let (_, sent) = bench.tick(ASKED + 7 * DAY - 1, 50, &mut randomness(), &mut gitlab);
    assert!(sent.is_empty());
    let (report, sent) = bench.tick(ASKED + 7 * DAY, 50, &mut randomness(), &mut gitlab);
    assert_eq!(sent.len(), 1);
    assert!(matches!(&report.events[..], [Event::DrillStarted { key, .. }] if key == WEB_KEY));
}

#[test]
fn a_failed_drill_is_recorded_with_gitlabs_reason_and_a_refused_deletion_is_reported_not_retried() {
    let bench = Bench::new(DRILLS);
    let mut gitlab = drill_gitlab(Some("Repository could not be imported"), 403);
    let (_, sent) = bench.tick(ASKED, 50, &mut randomness(), &mut gitlab);
    let id = archive_of(&sent[0]).0;
    let now = bench.restore(id).due_ms;
    let (report, _) = bench.tick(now, 50, &mut randomness(), &mut gitlab);
    assert!(matches!(
        &report.events[..],
        [Event::DrillFailed { reason, .. }] if reason.contains("Repository could not be imported")
    ));
    let drills = bench.store().drills().unwrap();
    assert_eq!((drills.passed, drills.failed), (0, 1));
    assert_eq!(drills.last_failure.unwrap().key, CLI_KEY);
    let (report, sent) = bench.tick(now, 50, &mut randomness(), &mut gitlab);
    assert_eq!(sent[0].method, Method::Delete);
    assert!(matches!(
        &report.events[..],
        [Event::DrillProjectKept { .. }]
    ));
    let row = bench.restore(id);
    assert_eq!(row.state, RestoreState::Failed);
    let error = row.error.unwrap_or_default();
    assert!(
        error.contains("Repository could not be imported") && error.contains("not deleted"),
        "{error}"
    );
    let (_, sent) = bench.tick(now + HOUR, 50, &mut randomness(), &mut no_gitlab);
    assert!(sent.is_empty(), "a refused deletion is not asked again");
}

#[test]
fn no_drill_starts_while_a_run_is_going_or_without_drills_set() {
    let bench = Bench::new(DRILLS);
    bench
        .store()
        .start_run(ASKED, &[("acme".into(), "acme".into())])
        .unwrap();
    let (_, sent) = bench.tick(ASKED, 50, &mut randomness(), &mut no_gitlab);
    assert!(sent.is_empty());
    let plain = Bench::new(&[]);
    let (_, sent) = plain.tick(ASKED, 50, &mut randomness(), &mut no_gitlab);
    assert!(sent.is_empty());
}

#[test]
fn an_import_whose_answer_was_lost_is_looked_up_and_its_project_taken_or_sent_again() {
    let bench = Bench::new(&[]);
    let body = json!({"project": CLI, "namespace": "acme/restores", "path": "cli-copy"});
    let lookup = format!("{GITLAB_API}projects/acme%2Frestores%2Fcli-copy/import");
    // GitLab made the project, but its answer was lost: the lookup finds it importing.
    let id = bench.ask(body.clone()).row().id;
    bench.tick(ASKED, 50, &mut randomness(), &mut |_, _| {
        Err("connection reset by peer".into())
    });
    let row = bench.restore(id);
    assert!(row.unanswered && row.state == RestoreState::Requested);
    let (_, sent) = bench.tick(row.due_ms, 50, &mut randomness(), &mut |_, request| {
        assert_eq!(request.url.as_str(), lookup);
        json_answer(
            200,
            json!({"id": 777, "import_status": "started", "failed_relations": []}),
        )
    });
    assert_eq!(sent.len(), 1, "no second import");
    let row = bench.restore(id);
    assert_eq!(
        (row.state, row.new_project_id, row.tries, row.unanswered),
        (RestoreState::Importing, Some(777), 1, false)
    );
    // A project there without an import is another's: the restore fails, nothing replaced.
    let body = json!({"project": CLI, "namespace": "acme/restores", "path": "cli-other"});
    let id = bench.ask(body).row().id;
    bench.tick(ASKED, 50, &mut randomness(), &mut |_, _| {
        Err("timeout".into())
    });
    let due = bench.restore(id).due_ms;
    bench.tick(due, 50, &mut randomness(), &mut |_, _| {
        json_answer(200, json!({"id": 9, "import_status": "none"}))
    });
    let row = bench.restore(id);
    assert_eq!(row.state, RestoreState::Failed);
    assert!(row.error.unwrap().contains("another project's path"));
    // No project there: the import is sent again (a new capability), once due.
    let body = json!({"project": CLI, "namespace": "acme/restores", "path": "cli-third"});
    let id = bench.ask(body).row().id;
    bench.tick(ASKED, 50, &mut randomness(), &mut |_, _| {
        Err("timeout".into())
    });
    let due = bench.restore(id).due_ms;
    bench.tick(due, 50, &mut randomness(), &mut |_, _| {
        json_answer(404, json!({"message": "404 Project Not Found"}))
    });
    let row = bench.restore(id);
    assert!(!row.unanswered && row.state == RestoreState::Requested);
    let (_, sent) = bench.tick(
        row.due_ms.max(ASKED + MINUTE),
        50,
        &mut randomness(),
        &mut |_, _| created(778, "acme/restores/cli-third"),
    );
    assert!(sent.iter().any(is_import));
    assert_eq!(bench.restore(id).state, RestoreState::Importing);
}

#[test]
fn after_a_5xx_to_its_import_the_restore_is_looked_up_before_it_is_sent_again() {
    let bench = Bench::new(&[]);
    let body = json!({"project": CLI, "namespace": "acme/restores", "path": "cli-copy"});
    let id = bench.ask(body).row().id;
    bench.tick(ASKED, 50, &mut randomness(), &mut |_, _| unavailable());
    assert!(
        bench.restore(id).unanswered,
        "a 5xx may come after GitLab made it"
    );
    let due = bench.restore(id).due_ms;
    let (_, sent) = bench.tick(due, 50, &mut randomness(), &mut |_, _| {
        json_answer(
            200,
            json!({"id": 321, "import_status": "scheduled", "failed_relations": []}),
        )
    });
    assert!(!sent.iter().any(is_import));
    assert_eq!(bench.restore(id).new_project_id, Some(321));
    // A 429 is a definite answer: no lookup.
    let body = json!({"project": CLI, "namespace": "acme/restores", "path": "cli-two"});
    let id = bench.ask(body).row().id;
    bench.tick(ASKED, 50, &mut randomness(), &mut |_, _| {
        json_answer(429, json!({"message": "Retry later"}))
    });
    assert!(!bench.restore(id).unanswered);
}

#[test]
fn past_the_daily_allowance_restores_wait_for_midnight_and_wake_no_sooner() {
    let bench = Bench::new(&[("DO_REQUESTS_PER_DAY", "2000")]);
    let id = bench.ask(json!({"project": CLI})).row().id;
    let store = bench.store();
    let day = ASKED / DAY;
    store
        .set_meta(
            crate::store::MetaKey::DailyUsage,
            json!({"day": day, "requests": 2000, "rows_written": 0}).to_string(),
        )
        .unwrap();
    let (report, sent) = bench.tick(ASKED, 50, &mut randomness(), &mut no_gitlab);
    assert!(sent.is_empty());
    assert_eq!(report.paused_until, Some((day + 1) * DAY));
    assert_eq!(
        crate::engine::restores::restores_wake(&store, &report).unwrap(),
        Some((day + 1) * DAY),
        "not the restore's due time, which has passed"
    );
    assert_eq!(bench.restore(id).state, RestoreState::Requested);
}

#[test]
fn a_drill_that_expired_while_importing_still_deletes_its_scratch_project() {
    let bench = Bench::new(DRILLS);
    let mut gitlab = drill_gitlab(None, 202);
    let (_, sent) = bench.tick(ASKED, 50, &mut randomness(), &mut gitlab);
    let id = archive_of(&sent[0]).0;
    let expires = bench.restore(id).expires_ms;
    // Never finishing, it expires; the DELETE still goes out.
    let (_, _) = bench.tick(expires, 50, &mut randomness(), &mut |_, _| {
        import_status("started", None)
    });
    assert_eq!(bench.restore(id).state, RestoreState::Cleaning);
    let (_, sent) = bench.tick(expires, 50, &mut randomness(), &mut gitlab);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, Method::Delete);
    assert_eq!(bench.restore(id).state, RestoreState::Failed);
}
