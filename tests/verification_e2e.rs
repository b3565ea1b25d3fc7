//! End to end: proof of landing. The stand-in fails the export of one project and loses the
//! upload of another (GitLab still reports it `finished`); the run retries both MAX_ATTEMPTS times
//! and reports each with the right reason, verifies the rest with their real sizes, writes a
//! manifest that matches `/status`, and the status page shows it in a real browser. (That no log
//! line and no `/status` answer holds a secret or an unredacted signature is checked for every
//! end-to-end test, by `common::checked` and `LocalStack::status`.)

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{accepted_per_project, browser, checked, count, own_projects, run_to_the_end};
use testkit::stack::{LocalStack, ADMIN_TOKEN};
use testkit::standin::{Faults, Options, Seed, DEMO_GROUPS};

const MAX_ATTEMPTS: u64 = 2;

fn test_output() -> Result<std::path::PathBuf> {
    let dir = testkit::tools::repo_root().join("test-output");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_exports_and_lost_uploads_are_retried_then_reported_and_the_rest_verified_with_their_sizes(
) -> Result<()> {
    let seed = Seed::demo();
    let own: Vec<u64> = own_projects(&seed, &DEMO_GROUPS)
        .iter()
        .map(|p| p.id)
        .collect();
    let (broken_build, lost_upload) = (own[2], own[5]);
    let stack = LocalStack::start(
        "verification",
        seed,
        Options {
            exports_per_window: 200,
            ..Options::default()
        },
        &DEMO_GROUPS.join(","),
        &[
            ("EXPORTS_PER_MINUTE", "200".to_owned()),
            ("VERIFY_TIMEOUT_MINUTES", "1".to_owned()),
            ("MAX_ATTEMPTS", MAX_ATTEMPTS.to_string()),
        ],
    )
    .await?;
    stack.standin.set_faults(Faults {
        fail_build: HashSet::from([broken_build]),
        fail_upload: HashSet::from([lost_upload]),
        ..Faults::default()
    });
    checked(stack, |stack| async move {
        let result = check(&stack, &own, broken_build, lost_upload).await;
        (Some(stack), result)
    })
    .await
}

async fn check(stack: &LocalStack, own: &[u64], broken_build: u64, lost_upload: u64) -> Result<()> {
    let status = run_to_the_end(stack, Duration::from_secs(8 * 60)).await?;

    // Outcomes: all but the two verified; the two failed with the right reasons, after
    // MAX_ATTEMPTS accepted exports each; the others exported once.
    let good = own.len() as u64 - 2;
    ensure!(count(&status, "listed")? == own.len() as u64, "{status}");
    ensure!(count(&status, "verified")? == good, "{status}");
    ensure!(count(&status, "failed")? == 2, "{status}");
    let reasons: BTreeMap<u64, String> = status["run"]["failures"]
        .as_array()
        .context("no failures list")?
        .iter()
        .map(|f| {
            (
                f["project_id"].as_u64().unwrap_or(0),
                f["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    ensure!(
        reasons[&broken_build].contains("GitLab could not build the export"),
        "reason for the broken build: {reasons:?}"
    );
    ensure!(
        reasons[&lost_upload].contains("the upload never arrived within 1 minutes"),
        "reason for the lost upload: {reasons:?}"
    );
    let attempts = accepted_per_project(&stack.standin.exports());
    for id in own {
        let expected = if [broken_build, lost_upload].contains(id) {
            MAX_ATTEMPTS as usize
        } else {
            1
        };
        ensure!(
            attempts.get(id) == Some(&expected),
            "project {id} was exported {:?} times, expected {expected}",
            attempts.get(id)
        );
    }

    // Verified sizes are the objects' real sizes in s3s-fs.
    let backups = status["last_backups"]
        .as_array()
        .context("no last_backups")?;
    ensure!(backups.len() as u64 == good, "last_backups: {backups:?}");
    for backup in backups {
        let key = backup["key"].as_str().context("backup without key")?;
        let on_disk = std::fs::metadata(stack.s3.object_path(key))
            .with_context(|| format!("{key} is not in s3s-fs"))?
            .len();
        ensure!(
            backup["size"] == on_disk,
            "size of {key}: /status {} vs {on_disk} in S3",
            backup["size"]
        );
    }

    // The manifest in the bucket matches /status.
    let summary_key = status["run"]["summary_key"]
        .as_str()
        .context("no summary_key")?;
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(stack.s3.object_path(summary_key)).context("summary.json is not in S3")?,
    )?;
    for name in ["listed", "exported", "verified", "failed"] {
        ensure!(
            summary[name] == status["run"]["projects"][name],
            "summary {name}: {summary} vs {status}"
        );
    }
    let mut lines = Vec::new();
    for part in summary["parts"]
        .as_array()
        .context("summary without parts")?
    {
        let key = part.as_str().context("part key")?;
        let text = std::fs::read_to_string(stack.s3.object_path(key))
            .with_context(|| format!("{key} is not in S3"))?;
        for line in text.lines() {
            lines.push(serde_json::from_str::<serde_json::Value>(line)?);
        }
    }
    ensure!(
        lines.len() == own.len(),
        "{} manifest lines for {} projects",
        lines.len(),
        own.len()
    );
    for line in &lines {
        let id = line["id"].as_u64().context("line without id")?;
        match reasons.get(&id) {
            Some(reason) => {
                ensure!(
                    line["outcome"] == "failed" && line["error"] == reason.as_str(),
                    "{line}"
                );
                ensure!(line["attempts"] == MAX_ATTEMPTS, "{line}");
            }
            None => ensure!(
                line["outcome"] == "verified" && line["size"].as_u64() > Some(0),
                "{line}"
            ),
        }
    }

    status_page_in_a_browser(stack, &reasons[&broken_build]).await
}

/// Headless Chromium signs in on the status page and sees the run and a failure reason.
async fn status_page_in_a_browser(stack: &LocalStack, reason: &str) -> Result<()> {
    let url = format!("{}/", stack.wrangler.url);
    let reason = reason.to_owned();
    let screenshot = test_output()?.join("status-page.png");
    tokio::task::spawn_blocking(move || -> Result<()> {
        use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
        let browser = browser((420, 900))?;
        let tab = browser.new_tab()?;
        tab.navigate_to(&url)?.wait_until_navigated()?;
        tab.wait_for_element("#token")?.click()?;
        tab.type_str("not-the-token")?.press_key("Enter")?;
        let refused = tab.wait_for_element("#login-error")?.get_inner_text()?;
        ensure!(
            refused.contains("wrong bearer token"),
            "a wrong token showed: {refused:?}"
        );
        tab.wait_for_element("#token")?.click()?;
        tab.type_str(ADMIN_TOKEN)?.press_key("Enter")?;
        tab.wait_for_element("#failures tr")?;
        let page = tab.wait_for_element("main")?.get_inner_text()?;
        ensure!(
            page.contains("finished"),
            "the page does not show the run's phase:\n{page}"
        );
        ensure!(
            page.contains("verified"),
            "the page does not show progress:\n{page}"
        );
        ensure!(
            page.contains(&reason),
            "the page does not show the failure reason:\n{page}"
        );
        tab.wait_for_element(".bar")?;
        let png = tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)?;
        std::fs::write(&screenshot, png)?;
        eprintln!("status page screenshot: {}", screenshot.display());
        Ok(())
    })
    .await?
}
