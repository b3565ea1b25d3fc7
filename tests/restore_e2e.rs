//! End to end: restores through `wrangler dev`, the GitLab stand-in and s3s-fs. A run backs the
//! projects up; one project is restored by path into another group, one by id from an explicit
//! key; GitLab's import (the stand-in's: a `HEAD` with GitLab's checks, then the download) takes
//! each archive from the worker's archive URL, byte for byte the object in the bucket, and the URL
//! no longer opens afterwards. A restore into a taken path ends `failed` with GitLab's reason;
//! bad requests are refused by name; nothing secret, and no capability, is logged.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{checked, own_projects, run_to_the_end};
use serde_json::{json, Value};
use testkit::stack::{LocalStack, ADMIN_TOKEN};
use testkit::standin::{Options, Seed};

const GROUPS: [&str; 2] = ["team-0", "team-1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_projects_restored_with_one_call_each_arrive_byte_for_byte_and_a_taken_path_fails(
) -> Result<()> {
    let stack = LocalStack::start(
        "restore",
        Seed::generated(2, 3),
        Options {
            exports_per_window: 200,
            // wrangler dev serves http: the stand-in's switch for local imports.
            allow_http_imports: true,
            ..Options::default()
        },
        &GROUPS.join(","),
        &[("EXPORTS_PER_MINUTE", "200".to_owned())],
    )
    .await?;
    checked(stack, |stack| async move {
        let result = check(&stack).await;
        (Some(stack), result)
    })
    .await
}

/// `POST /restore` with `body` (and the token unless `token` is false): status and JSON.
async fn restore(stack: &LocalStack, body: &Value, token: bool) -> Result<(u16, Value)> {
    let mut request = reqwest::Client::new()
        .post(format!("{}/restore", stack.wrangler.url))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(60));
    if token {
        request = request.bearer_auth(ADMIN_TOKEN);
    }
    let response = request.send().await.context("POST /restore")?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    stack.ensure_nothing_secret("POST /restore's answer", &text)?;
    let json = serde_json::from_str(&text)
        .with_context(|| format!("POST /restore answered {status} with no JSON: {text}"))?;
    Ok((status, json))
}

async fn check(stack: &LocalStack) -> Result<()> {
    let seed = Seed::generated(2, 3);
    let own = own_projects(&seed, &GROUPS);
    let status = run_to_the_end(stack, Duration::from_secs(4 * 60)).await?;
    let backups = status["last_backups"]
        .as_array()
        .context("no last_backups")?;
    ensure!(backups.len() == own.len(), "{backups:?}");
    let backup_of = |path: &str| -> Result<&Value> {
        backups
            .iter()
            .find(|b| b["path"] == path)
            .with_context(|| format!("no backup of {path}: {backups:?}"))
    };
    let by_path = backup_of("team-0/project-0")?;
    let by_id = backup_of("team-0/sub-0/project-1")?;

    // Refusals, each naming what is wrong.
    for (body, token, expected, field) in [
        (json!({"project": "team-0/project-0"}), false, 401, None),
        (
            json!({"project": "team-0/nope"}),
            true,
            404,
            Some("project"),
        ),
        (
            json!({"project": "team-0/project-0", "path": "a/b"}),
            true,
            400,
            Some("path"),
        ),
        (
            json!({"project": "team-0/project-0", "namespace": "elsewhere"}),
            true,
            403,
            Some("namespace"),
        ),
        (
            json!({"project": "team-0/project-0", "backup": "team-0/project-0/1999-01-01-00-00-00.tar.gz"}),
            true,
            404,
            Some("backup"),
        ),
        (
            json!({"project": "team-0/project-0", "backup": by_id["key"]}),
            true,
            400,
            Some("backup"),
        ),
    ] {
        let (code, answer) = restore(stack, &body, token).await?;
        ensure!(code == expected, "{body} answered {code}: {answer}");
        if let Some(field) = field {
            ensure!(answer["field"] == field, "{body}: {answer}");
        }
    }

    // One by path into the other group, one by id from its explicit key, one into a taken path.
    let (code, first) = restore(
        stack,
        &json!({"project": "team-0/project-0", "namespace": "team-1", "path": "zero-copy"}),
        true,
    )
    .await?;
    ensure!(code == 202, "{code}: {first}");
    ensure!(
        first["restore"]["target"] == "team-1/zero-copy"
            && first["restore"]["key"] == by_path["key"]
            && first["restore"]["state"] == "requested",
        "{first}"
    );
    let (code, second) = restore(
        stack,
        &json!({"project": by_id["project_id"], "backup": by_id["key"]}),
        true,
    )
    .await?;
    ensure!(code == 202, "{code}: {second}");
    let second_target = second["restore"]["target"].as_str().unwrap_or_default();
    ensure!(
        second_target.starts_with("team-0/sub-0/project-1-restored-"),
        "the default target is the project's namespace and <path>-restored-<time>: {second}"
    );
    let (code, taken) = restore(
        stack,
        &json!({"project": "team-0/project-0", "path": "project-2"}),
        true,
    )
    .await?;
    ensure!(code == 202, "{code}: {taken}");

    // The worker's alarms carry them to their ends: no cron.
    let status = stack
        .wait_for_status("three restores ended", None, Duration::from_secs(90), |s| {
            s["restores"].as_array().is_some_and(|r| {
                r.len() == 3
                    && r.iter()
                        .all(|r| r["state"] == "finished" || r["state"] == "failed")
            })
        })
        .await?;
    let restores = status["restores"].as_array().context("no restores")?;
    let shown = |id: &Value| restores.iter().find(|r| r["id"] == *id).cloned();
    let ended_first = shown(&first["restore"]["id"]).context("first restore not listed")?;
    let ended_second = shown(&second["restore"]["id"]).context("second restore not listed")?;
    let ended_taken = shown(&taken["restore"]["id"]).context("taken restore not listed")?;
    ensure!(
        restores[0]["id"] == taken["restore"]["id"],
        "newest first: {restores:?}"
    );
    for ended in [&ended_first, &ended_second] {
        ensure!(ended["state"] == "finished", "{ended}");
        ensure!(ended["new_project_id"].as_u64().is_some(), "{ended}");
        let web_url = ended["web_url"].as_str().unwrap_or_default();
        ensure!(
            web_url.ends_with(ended["target"].as_str().unwrap_or("?")),
            "the web URL is GitLab's page of the target: {ended}"
        );
    }
    ensure!(ended_taken["state"] == "failed", "{ended_taken}");
    ensure!(
        ended_taken["error"]
            .as_str()
            .is_some_and(|e| e.contains("Path has already been taken")),
        "GitLab's reason: {ended_taken}"
    );

    // GitLab downloaded each archive byte for byte from the bucket, through the worker.
    let imports = stack.standin.imports();
    let created: Vec<_> = imports.iter().filter(|i| i.status == 201).collect();
    ensure!(created.len() == 2, "{imports:#?}");
    for (import, key) in created.iter().zip([&by_path["key"], &by_id["key"]]) {
        let key = key.as_str().context("a key")?;
        let (sha256, bytes) = stack.s3.object_sha256(key)?;
        ensure!(
            import.archive_sha256.as_deref() == Some(sha256.as_str())
                && import.archive_bytes == Some(bytes),
            "the import of {key} downloaded {:?} ({:?} bytes), the bucket holds {sha256} ({bytes})",
            import.archive_sha256,
            import.archive_bytes
        );
        let head = import.head.as_ref().context("GitLab's HEAD")?;
        ensure!(
            head.status == Some(200)
                && head.content_type.as_deref() == Some("application/gzip")
                && head.content_length.as_deref() == Some(bytes.to_string().as_str()),
            "the HEAD passes GitLab's checks: {head:?}"
        );
    }
    let refused = imports
        .iter()
        .find(|i| i.status == 400)
        .context("the taken path's import")?;
    ensure!(
        refused.path.as_deref() == Some("project-2") && !refused.overwrite,
        "never overwrite: {refused:?}"
    );

    // Once the imports ended, their archive URLs no longer open.
    let mut capabilities = Vec::new();
    for import in &imports {
        let url = import.url.as_deref().context("an import URL")?;
        capabilities.push(url.rsplit('/').next().unwrap_or_default().to_owned());
        for method in [reqwest::Method::HEAD, reqwest::Method::GET] {
            let code = reqwest::Client::new()
                .request(method.clone(), url)
                .timeout(Duration::from_secs(30))
                .send()
                .await?
                .status()
                .as_u16();
            ensure!(code == 410 || code == 404, "{method} {url} answered {code}");
        }
    }
    // Nothing secret in the logs (checked for every test), and no capability in the worker's
    // lines either. (The runtime's own request log names each request's path, as a server's
    // access log does with a presigned URL: hence a capability for one restore, that stops
    // opening when its import ends.)
    let log = std::fs::read_to_string(&stack.wrangler.log)?;
    let requests_logged = |line: &str| {
        line.starts_with("[wrangler:info] HEAD /restore/archive/")
            || line.starts_with("[wrangler:info] GET /restore/archive/")
    };
    for line in log.lines().filter(|line| !requests_logged(line)) {
        for capability in &capabilities {
            ensure!(
                capability.len() == 64 && !line.contains(capability.as_str()),
                "the worker logged an archive URL's capability: {line}"
            );
        }
    }
    let events = stack.wrangler.events()?;
    let named = |name: &str| events.iter().filter(|e| e["event"] == name).count();
    ensure!(
        (
            named("restore_requested"),
            named("restore_finished"),
            named("restore_failed")
        ) == (3, 2, 1),
        "restore events: {:?}",
        events
            .iter()
            .filter(|e| e["event"]
                .as_str()
                .is_some_and(|n| n.starts_with("restore")))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// A drill end to end: a run, then (on the next tick, no run going) one backup imported into
/// the scratch group, `passed` on that backup, the scratch project deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_run_a_drill_imports_one_backup_into_the_scratch_group_records_it_passed_and_deletes_it(
) -> Result<()> {
    let stack = LocalStack::start_with_worker_url(
        "restore-drill",
        Seed::generated(2, 2),
        Options {
            exports_per_window: 200,
            allow_http_imports: true,
            ..Options::default()
        },
        "team-0",
        &[
            ("EXPORTS_PER_MINUTE", "200".to_owned()),
            ("RESTORE_DRILL_NAMESPACE", "team-1/sub-0".to_owned()),
        ],
    )
    .await?;
    checked(stack, |stack| async move {
        let result = drill(&stack).await;
        (Some(stack), result)
    })
    .await
}

async fn drill(stack: &LocalStack) -> Result<()> {
    run_to_the_end(stack, Duration::from_secs(4 * 60)).await?;
    // The cron's next tick starts the drill; the alarms carry it to its end.
    let status = stack
        .wait_for_status(
            "a drill passed and its project deleted",
            Some(Duration::from_secs(5)),
            Duration::from_secs(120),
            |s| {
                s["drills"]["passed"] == 1
                    && s["restores"][0]["drill"] == true
                    && s["restores"][0]["state"] == "finished"
            },
        )
        .await?;
    let drills = &status["drills"];
    ensure!(
        drills["namespace"] == "team-1/sub-0"
            && drills["every_days"] == 7
            && drills["failed"] == 0
            && drills["last_failure"].is_null(),
        "{drills}"
    );
    let restore = &status["restores"][0];
    let target = restore["target"].as_str().unwrap_or_default();
    ensure!(
        target.starts_with("team-1/sub-0/project-") && target.contains("-drill-"),
        "{restore}"
    );
    // Never drilled before: the first backup by id.
    let backups = status["last_backups"]
        .as_array()
        .context("no last_backups")?;
    let drilled: Vec<&Value> = backups.iter().filter(|b| !b["drill"].is_null()).collect();
    ensure!(drilled.len() == 1, "one backup drilled: {backups:?}");
    let backup = drilled[0];
    ensure!(
        backup["path"] == restore["project"]
            && backup["drill"]["result"] == "passed"
            && backup["drill"]["key"] == backup["key"],
        "{backup}"
    );
    // GitLab downloaded that backup byte for byte, and the scratch project is gone.
    let imports = stack.standin.imports();
    ensure!(imports.len() == 1, "{imports:#?}");
    let (sha256, _) = stack
        .s3
        .object_sha256(backup["key"].as_str().unwrap_or_default())?;
    ensure!(
        imports[0].archive_sha256.as_deref() == Some(sha256.as_str()),
        "{imports:#?}"
    );
    let deletions = stack.standin.deletions();
    ensure!(
        deletions.len() == 1
            && restore["new_project_id"].as_u64().is_some_and(|id| {
                deletions[0].project_id == testkit::standin::ProjectRef::Known(id)
            })
            && deletions[0].status == 202,
        "the scratch project is deleted once: {deletions:#?}"
    );
    let events = stack.wrangler.events()?;
    let named = |name: &str| events.iter().filter(|e| e["event"] == name).count();
    ensure!(
        (
            named("drill_started"),
            named("drill_passed"),
            named("drill_failed")
        ) == (1, 1, 0),
        "drill events"
    );
    Ok(())
}
