//! `cargo xtask demo`: a whole backup run on this machine, shown as it happens — the GitLab
//! stand-in (its demo world, GitLab's real 6 exports per minute), s3s-fs and the worker under
//! `wrangler dev`, with the cron trigger fired as production would. Ctrl-C stops everything.
//!
//! `cargo xtask standin [PORT]`: the stand-in alone, for poking at it with curl.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Result;
use testkit::stack::LocalStack;
use testkit::standin::{Options, Seed, Standin, DEMO_GROUPS};

/// How often the demo fires the cron trigger (production: every minute; the worker's own alarm
/// fills the gaps, so a faster clock changes nothing about the pace).
const CRON_EVERY: Duration = Duration::from_secs(20);
/// The demo gives up after this long.
const DEMO_LIMIT: Duration = Duration::from_secs(15 * 60);

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn standin(port: Option<&str>) -> Result<()> {
    let port = port.map(str::parse).transpose()?.unwrap_or(0);
    runtime()?.block_on(async {
        let options = Options {
            port,
            ..Options::default()
        };
        let token = options.token.clone();
        let standin = Standin::start(Seed::demo(), options).await?;
        println!(
            "GitLab stand-in at {} (PRIVATE-TOKEN: {token}); Ctrl-C stops it",
            standin.base_url()
        );
        tokio::signal::ctrl_c().await?;
        standin.stop().await;
        Ok(())
    })
}

pub fn run() -> Result<()> {
    runtime()?.block_on(async {
        let seed = Seed::demo();
        // acme by id, globex and initech by full path: GROUPS_TO_BACKUP takes both. The demo
        // world's `contractors` group is not backed up, though it shares projects into these.
        let groups: Vec<String> = DEMO_GROUPS
            .iter()
            .enumerate()
            .map(|(i, path)| match seed.group_by_path(path) {
                Some(group) if i == 0 => group.id.to_string(),
                _ => (*path).to_owned(),
            })
            .collect();
        let groups = groups.join(",");
        println!(
            "Starting the GitLab stand-in, s3s-fs and wrangler dev (GROUPS_TO_BACKUP={groups}) …"
        );
        let stack = LocalStack::start("demo", seed, Options::default(), &groups, &[]).await?;
        println!(
            "worker:  {}\nGitLab:  {}\nS3:      {}\nfiles:   {}\n",
            stack.wrangler.url,
            stack.standin.base_url(),
            stack.s3.endpoint,
            stack.dir.display()
        );
        let outcome = tokio::select! {
            result = show_run(&stack) => result,
            _ = tokio::signal::ctrl_c() => {
                println!("\nCtrl-C: stopping everything …");
                Ok(())
            }
        };
        stack.stop().await;
        outcome
    })
}

/// Fires cron ticks and prints each event and each landed object until the run is finished
/// and every accepted export has been uploaded.
async fn show_run(stack: &LocalStack) -> Result<()> {
    let started = Instant::now();
    let mut shown_events = 0;
    let mut landed = BTreeSet::new();
    let mut last_cron: Option<Instant> = None;
    let mut finished = false;
    while started.elapsed() < DEMO_LIMIT {
        if last_cron.is_none_or(|t| t.elapsed() >= CRON_EVERY) {
            println!("[{:>4}s] cron tick", started.elapsed().as_secs());
            stack.wrangler.fire_cron().await?;
            last_cron = Some(Instant::now());
        }
        let events = stack.wrangler.events()?;
        for event in &events[shown_events..] {
            println!("[{:>4}s] {}", started.elapsed().as_secs(), describe(event));
            finished |= event["event"] == "run_finished";
        }
        shown_events = events.len();
        for (key, size) in stack.s3.objects()? {
            if landed.insert(key.clone()) {
                println!(
                    "[{:>4}s] landed in S3: {key} ({size} bytes)",
                    started.elapsed().as_secs()
                );
            }
        }
        let accepted = stack
            .standin
            .exports()
            .iter()
            .filter(|e| e.status == 202)
            .count();
        if finished
            && stack.standin.wait_idle(Duration::ZERO).await.is_ok()
            && landed.len() >= accepted
        {
            summary(stack, started.elapsed())?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!(
        "the run did not finish within {DEMO_LIMIT:?}; see {}",
        stack.dir.display()
    )
}

fn describe(event: &serde_json::Value) -> String {
    let text = |name: &str| event[name].as_str().unwrap_or("").to_owned();
    match event["event"].as_str().unwrap_or("") {
        "run_started" => format!(
            "run {} started for groups {}",
            event["run"], event["groups"]
        ),
        "page_listed" => format!(
            "listed a page of {}: {} projects ({} new){}",
            text("group"),
            event["projects"],
            event["new"],
            if event["more"] == true {
                ", more to come"
            } else {
                ""
            }
        ),
        "preflight_passed" => format!(
            "preflight passed: token of {} valid, bucket writable",
            text("user")
        ),
        "export_requested" => format!("export scheduled: {} → {}", text("path"), text("key")),
        "exported" => format!("GitLab accepted the export of {}", text("path")),
        "verified" => format!("verified in S3: {} ({} bytes)", text("key"), event["size"]),
        "retry_scheduled" => format!(
            "attempt {} of {} failed: {}; retrying",
            event["attempts"],
            text("path"),
            text("reason")
        ),
        "manifest_written" => format!(
            "manifest part written: {} ({} projects)",
            text("key"),
            event["projects"]
        ),
        "run_stopped" => format!("run STOPPED: {}", text("reason")),
        "tick_ended" => format!(
            "tick ended: {} subrequests, {} exports",
            event["subrequests"], event["exports"]
        ),
        "export_failed" => format!("export FAILED: {}: {}", text("path"), text("reason")),
        "group_failed" => format!("group FAILED: {}: {}", text("group"), text("reason")),
        "rate_limited" => format!("GitLab answered 429; waiting {} s", event["retry_after_s"]),
        "run_finished" => format!(
            "run {} finished: {} listed, {} exported, {} verified, {} failed; manifest {}",
            event["run"],
            event["listed"],
            event["exported"],
            event["verified"],
            event["failed"],
            text("summary")
        ),
        _ => event.to_string(),
    }
}

fn summary(stack: &LocalStack, took: Duration) -> Result<()> {
    let objects = stack.s3.objects()?;
    let exports = stack.standin.exports();
    let refused = exports.iter().filter(|e| e.status == 429).count();
    println!("\nSummary after {} s:", took.as_secs());
    println!("  {:<60} {:>10}", "object key", "bytes");
    for (key, size) in &objects {
        println!("  {key:<60} {size:>10}");
    }
    println!(
        "  {} objects in s3s-fs; {} export requests, {} answered 429 (GitLab's limit: 6 per minute)",
        objects.len(),
        exports.len(),
        refused
    );
    Ok(())
}
