//! End to end through `wrangler dev`, the GitLab stand-in and s3s-fs: one cron tick (and the alarm
//! it sets for at once) requests at most six exports, GitLab's uploads land as real gzip tarballs
//! at the right keys, the presigned URLs the worker made are really checked by S3, the next window
//! exports the next projects, and the HTTP API refuses what it must with the right status codes.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{accepted, checked, is_run_timestamp_file, key_of, project_id, tarball_entries};
use testkit::stack::LocalStack;
use testkit::standin::{Options, Seed, DEMO_GROUPS};

async fn wait_for_exports(stack: &LocalStack, count: usize, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while accepted(&stack.standin.exports()).len() < count {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} exports within {timeout:?}",
            accepted(&stack.standin.exports()).len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cron_tick_lands_at_most_six_real_exports_in_s3_then_the_next_window_exports_the_next_projects(
) -> Result<()> {
    let stack = LocalStack::start(
        "foundation",
        Seed::demo(),
        Options::default(), // GitLab's real limit: 6 per 60 s
        &DEMO_GROUPS.join(","),
        &[],
    )
    .await?;
    checked(stack, |stack| async move {
        let result = check(&stack).await;
        (Some(stack), result)
    })
    .await
}

async fn check(stack: &LocalStack) -> Result<()> {
    // The cron tick checks the token and the bucket and lists; the tick that follows at once
    // on the alarm sends the first window's exports.
    stack.wrangler.fire_cron().await?;
    wait_for_exports(stack, 6, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = stack.standin.exports();
    ensure!(
        first.len() <= 6,
        "one tick made {} export requests",
        first.len()
    );
    ensure!(
        accepted(&first).len() == 6,
        "expected 6 accepted exports, got {first:?}"
    );
    stack.standin.wait_idle(Duration::from_secs(30)).await?;

    // Each accepted export landed in S3, at <path_with_namespace>/<run start>.tar.gz, as a gzip
    // tarball holding VERSION; all of one run share the timestamp.
    let seed = stack.standin.seed();
    let mut stamps = HashSet::new();
    for record in accepted(&first) {
        let project = seed
            .project(project_id(record))
            .context("unknown project")?;
        let upload_url = record
            .upload_url
            .as_deref()
            .context("export without upload URL")?;
        let key = key_of(upload_url);
        let file = key
            .strip_prefix(&format!("{}/", project.path_with_namespace))
            .with_context(|| format!("key {key} is not under {}", project.path_with_namespace))?;
        ensure!(
            is_run_timestamp_file(file),
            "key {key} does not end in the run's timestamp"
        );
        stamps.insert(file.to_owned());
        let bytes = std::fs::read(stack.s3.object_path(&key))
            .with_context(|| format!("object {key} is not in s3s-fs"))?;
        let entries =
            tarball_entries(&bytes).with_context(|| format!("{key} is no gzip tarball"))?;
        ensure!(
            entries.iter().any(|e| e == "VERSION"),
            "{key} lacks VERSION: {entries:?}"
        );
    }
    ensure!(stamps.len() == 1, "one run, one timestamp: {stamps:?}");

    // A presigned PUT made by the worker is accepted by s3s-fs; one changed character is refused.
    let upload_url = accepted(&first)[0].upload_url.clone().unwrap();
    let client = reqwest::Client::new();
    let put = |url: String| {
        client
            .put(url)
            .header("Content-Type", "application/gzip")
            .body(std::fs::read(stack.s3.object_path(&key_of(&upload_url))).unwrap())
            .send()
    };
    let good = put(upload_url.clone()).await?.status();
    ensure!(
        good.as_u16() == 200,
        "the worker's presigned URL was refused: {good}"
    );
    let signature_at = upload_url
        .find("X-Amz-Signature=")
        .context("unsigned URL")?
        + 16;
    let mut tampered = upload_url.clone().into_bytes();
    tampered[signature_at] = if tampered[signature_at] == b'0' {
        b'1'
    } else {
        b'0'
    };
    let bad = put(String::from_utf8(tampered)?).await?.status();
    ensure!(bad.as_u16() == 403, "a tampered URL was answered {bad}");

    // A second tick at once exports nothing: the window is full.
    stack.wrangler.fire_cron().await?;
    ensure!(
        stack.standin.exports().len() == 6,
        "a tick inside the full window exported: {:?}",
        stack.standin.exports()
    );

    // When the window frees, the worker's own alarm exports the next six, never the same ones.
    wait_for_exports(stack, 12, Duration::from_secs(90)).await?;
    let all = stack.standin.exports();
    let ids: Vec<u64> = accepted(&all).into_iter().map(project_id).collect();
    let distinct: HashSet<u64> = ids.iter().copied().collect();
    ensure!(
        distinct.len() == ids.len(),
        "a project was exported twice: {ids:?}"
    );
    ensure!(
        all.iter().all(|e| e.status != 429),
        "GitLab answered 429: {all:?}"
    );
    let first_at = all[0].at;
    let seventh_at = accepted(&all)[6].at;
    ensure!(
        seventh_at.duration_since(first_at)? >= Duration::from_secs(60),
        "the 7th export came {:?} after the first",
        seventh_at.duration_since(first_at)?
    );
    http_api_refusals(stack).await
}

/// Unknown routes, wrong methods, bodies, missing or wrong tokens: refused with the right status
/// and header through the real worker, and no answer holds a secret.
async fn http_api_refusals(stack: &LocalStack) -> Result<()> {
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", stack.wrangler.url);
    let admin = format!("Bearer {}", testkit::stack::ADMIN_TOKEN);
    let cases = [
        (client.get(url("/nope")), 404, None),
        (client.get(url("/.env")), 404, None),
        (client.delete(url("/status")), 405, Some(("allow", "GET"))),
        (client.get(url("/run")), 405, Some(("allow", "POST"))),
        (client.post(url("/")), 405, Some(("allow", "GET"))),
        (
            client
                .post(url("/run"))
                .header("Authorization", &admin)
                .body(vec![b'x'; 4096]),
            413,
            None,
        ),
        (
            client.get(url("/status")),
            401,
            Some(("www-authenticate", "Bearer")),
        ),
        (
            client
                .get(url("/status"))
                .header("Authorization", "Bearer wrong-token"),
            401,
            Some(("www-authenticate", "Bearer")),
        ),
        (
            client
                .post(url("/run"))
                .header("Authorization", "Basic YWRtaW46YWRtaW4="),
            401,
            None,
        ),
    ];
    for (request, status, header) in cases {
        let request = request.build()?;
        let what = format!("{} {}", request.method(), request.url().path());
        let response = client.execute(request).await?;
        ensure!(
            response.status().as_u16() == status,
            "{what} answered {}, not {status}",
            response.status()
        );
        if let Some((name, value)) = header {
            ensure!(
                response.headers().get(name).and_then(|v| v.to_str().ok()) == Some(value),
                "{what}: no {name}: {value}"
            );
        }
        let body = response.text().await?;
        let error: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("{what}: no JSON: {body}"))?;
        ensure!(error["error"].is_string(), "{what}: {body}");
        stack.ensure_nothing_secret(&what, &body)?;
    }
    Ok(())
}
